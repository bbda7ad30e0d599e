//! `streamspace-control-plane`: see `streamspace_control_plane::cli`.

/// jemalloc gives freed memory back to the system after a short decay
/// (glibc's malloc keeps it): after a burst of connections closes, the
/// control plane's resident memory returns near where it was.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    streamspace_control_plane::cli::main().await
}
