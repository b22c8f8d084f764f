//! Artifact downloads over real HTTP into the content-addressed cache.

mod support;

use munifab_agent::artifact::{ArtifactCache, FetchError};
use support::{ArtifactServer, sha256_hex, temp_dir};

fn gcode(lines: usize) -> Vec<u8> {
    (0..lines)
        .map(|i| format!("G1 X{} Y{} F1200\n", i % 200, (i * 7) % 200))
        .collect::<String>()
        .into_bytes()
}

fn cache(server: &ArtifactServer) -> (ArtifactCache, std::path::PathBuf) {
    let dir = temp_dir();
    let c = ArtifactCache::new(dir.join("artifacts"), server.base.parse().unwrap()).unwrap();
    (c, dir)
}

#[tokio::test]
async fn a_download_is_verified_and_stored_under_its_digest() {
    let server = ArtifactServer::start().await;
    let data = gcode(2000);
    let artifact = server.add("a.gcode", &data);
    let (cache, dir) = cache(&server);
    let path = cache.fetch(&artifact).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(path.ends_with(format!("sha256/{}", artifact.sha256)));
    // A second fetch is served from the cache without a request.
    cache.fetch(&artifact).await.unwrap();
    assert_eq!(server.log.ranges.lock().unwrap().len(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_partial_download_is_resumed_with_a_range_request() {
    let server = ArtifactServer::start().await;
    let data = gcode(5000);
    let artifact = server.add("b.gcode", &data);
    let (cache, dir) = cache(&server);
    let half = data.len() / 2;
    std::fs::write(
        dir.join(format!("artifacts/partial/{}.part", artifact.sha256)),
        &data[..half],
    )
    .unwrap();
    assert_eq!(cache.cached_bytes(&artifact), half as u64);
    let path = cache.fetch(&artifact).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(
        server.log.ranges.lock().unwrap().as_slice(),
        [Some(format!("bytes={half}-"))]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn content_that_does_not_match_its_digest_is_refused_and_not_cached() {
    let server = ArtifactServer::start().await;
    let data = gcode(100);
    let mut artifact = server.add("c.gcode", &data);
    artifact.sha256 = sha256_hex(b"something else");
    let (cache, dir) = cache(&server);
    let err = cache.fetch(&artifact).await.unwrap_err();
    assert!(matches!(err, FetchError::ChecksumMismatch { .. }), "{err}");
    assert!(err.is_integrity());
    assert!(!cache.path_of(&artifact.sha256).exists());
    assert_eq!(cache.cached_bytes(&artifact), 0, "the bad bytes are gone");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn content_longer_than_announced_is_refused() {
    let server = ArtifactServer::start().await;
    let data = gcode(100);
    let mut artifact = server.add("d.gcode", &data);
    artifact.size -= 10;
    let (cache, dir) = cache(&server);
    let err = cache.fetch(&artifact).await.unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_missing_artifact_and_a_bad_digest_are_clear_errors() {
    let server = ArtifactServer::start().await;
    let (cache, dir) = cache(&server);
    let mut artifact = server.add("e.gcode", b"G28\n");
    artifact.url = format!("{}/artifacts/nope", server.base);
    let err = cache.fetch(&artifact).await.unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 404, .. }),
        "{err}"
    );
    artifact.sha256 = "../../etc/passwd".into();
    let err = cache.fetch(&artifact).await.unwrap_err();
    assert!(matches!(err, FetchError::BadDigest(_)), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
