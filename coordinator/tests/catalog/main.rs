//! Catalog integration tests: real git repositories, real folders, real mirrors.

mod http;
mod manifest_errors;
mod periodic;
mod provenance;
mod seed;
mod shipped;
mod stream;
mod sync;
mod util;
