//! Real databases for the coordinator's tests: a fresh SQLite file always, and a fresh
//! PostgreSQL schema when `MUNIFAB_TEST_DATABASE_URL` is set (failing if it is unreachable).

#![allow(dead_code)]

use std::path::PathBuf;

use munifab_coordinator::store::Store;
use munifab_tests::services;

/// A migrated store on a fresh database, removed when dropped (SQLite) or left as an
/// isolated schema (PostgreSQL).
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub store: Store,
    pub dir: PathBuf,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

/// A scratch directory under the system temp dir.
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("munifab-coord-{}", unique()));
    std::fs::create_dir_all(&dir).expect("create a scratch dir");
    dir
}

/// SQLite, plus PostgreSQL when CI configured it.
pub async fn each_db() -> Vec<TestDb> {
    let mut dbs = vec![sqlite().await];
    if let Some(url) = services::database_url() {
        dbs.push(postgres(&url).await);
    }
    dbs
}

pub async fn sqlite() -> TestDb {
    let dir = scratch_dir();
    let store = Store::open_sqlite(&dir.join("munifab.db"))
        .await
        .expect("open SQLite");
    store.migrate().await.expect("migrate SQLite");
    TestDb {
        name: "sqlite".into(),
        store,
        dir,
    }
}

/// A fresh schema on the configured server, selected through `search_path`, so tests
/// running in parallel never see each other's rows.
pub async fn postgres(url: &str) -> TestDb {
    let schema = format!("t_{}", unique());
    let admin = Store::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    admin
        .execute_raw(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create a test schema");
    admin.close().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = Store::connect(&format!("{url}{sep}options[search_path]={schema}"))
        .await
        .expect("connect to the test schema");
    store.migrate().await.expect("migrate PostgreSQL");
    TestDb {
        name: format!("postgres ({schema})"),
        store,
        dir: scratch_dir(),
    }
}

pub mod agent;
pub mod fixtures;
pub mod http;

/// SQLite URL in a scratch dir, plus a fresh PostgreSQL schema URL when CI configured one.
pub async fn each_db_url() -> Vec<(String, PathBuf)> {
    let dir = scratch_dir();
    let mut urls = vec![(
        format!("sqlite://{}", dir.join("munifab.db").display()),
        dir,
    )];
    if let Some(url) = services::database_url() {
        let schema = format!("t_{}", unique());
        let admin = Store::connect(&url).await.expect("connect to PostgreSQL");
        admin
            .execute_raw(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create a test schema");
        admin.close().await;
        let sep = if url.contains('?') { '&' } else { '?' };
        urls.push((
            format!("{url}{sep}options[search_path]={schema}"),
            scratch_dir(),
        ));
    }
    urls
}
