//! `crdgen`: prints the CustomResourceDefinitions, or writes them into a
//! directory (`crdgen chart/crds`). A test fails if the committed YAML drifted.
use streamspace_control_plane::k8s::crd::crd_files;

fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1) {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (name, yaml) in crd_files() {
                let path = std::path::Path::new(&dir).join(name);
                std::fs::write(&path, yaml)?;
                println!("wrote {}", path.display());
            }
        }
        None => crd_files()
            .iter()
            .for_each(|(_, yaml)| println!("---\n{yaml}")),
    }
    Ok(())
}
