//! `streamspace-control-plane`: see `streamspace_control_plane::cli`.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    streamspace_control_plane::cli::main().await
}
