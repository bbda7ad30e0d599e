//! Runs a pod's container as a local process, as the kubelet would have:
//! KWOK's fake nodes schedule pods but run nothing, so a chart test reads the
//! pod the Deployment (or Job) made and starts our real binary from it.
//!
//! What is taken from the pod: the command and args, every env var (plain
//! values, `fieldRef`, `secretKeyRef`), the volumes (Secrets written to a
//! directory per mount, emptyDir/PVC as empty directories) and the
//! ServiceAccount (a TokenRequest token in a kubeconfig, the pod's only
//! Kubernetes credentials). What is changed so it runs on one machine:
//! - absolute mount paths become directories under the pod's own root;
//! - `/usr/local/bin/<name>` is the binary from this build's target dir;
//! - every `0.0.0.0:<containerPort>` becomes `127.0.0.1:<free port>`
//!   ([`PodProcess::port`] tells which);
//! - `rewrites` replace strings the test names (a Service's DNS name and port
//!   by the local address of the process behind it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use serde_json::Value;

use crate::k8s::{TestCluster, kubectl_ok};

/// One pod run as a process.
pub struct PodProcess {
    pub name: String,
    pub root: PathBuf,
    child: Child,
    ports: BTreeMap<u16, SocketAddr>,
}

/// What the test adds to a pod's spec.
#[derive(Default, Clone)]
pub struct PodOptions {
    /// (from, to) string replacements in env values and args, applied first.
    pub rewrites: Vec<(String, String)>,
    /// Env vars added after the pod's own.
    pub extra_env: Vec<(String, String)>,
}

fn get_json(k: &TestCluster, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&kubectl_ok(&k.admin_kubeconfig, &a, None)).expect("kubectl json")
}

/// Replaces each mount path (longest first) at the start of a path inside `s`
/// by the same path under `root`, in one pass over the original string.
fn remap_paths(s: &str, mounts: &[String], root: &Path) -> String {
    let mut sorted: Vec<&String> = mounts.iter().collect();
    sorted.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let mut out = String::new();
    let mut i = 0;
    'scan: while i < s.len() {
        for m in &sorted {
            let rest = &s[i..];
            let boundary = rest[m.len().min(rest.len())..]
                .chars()
                .next()
                .is_none_or(|c| c == '/' || !c.is_alphanumeric() && c != '-' && c != '_');
            let starts_path = i == 0 || !s[..i].ends_with(|c: char| c.is_alphanumeric());
            if rest.starts_with(m.as_str()) && boundary && starts_path {
                out.push_str(&root.join(m.trim_start_matches('/')).to_string_lossy());
                i += m.len();
                continue 'scan;
            }
        }
        let c = s[i..].chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

fn secret_data(k: &TestCluster, ns: &str, name: &str) -> BTreeMap<String, Vec<u8>> {
    let v = get_json(k, &["secret", name, "-n", ns]);
    v["data"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(key, val)| {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(val.as_str().unwrap_or_default())
                        .expect("secret data is base64");
                    (key.clone(), bytes)
                })
                .collect()
        })
        .unwrap_or_default()
}

impl PodProcess {
    /// Starts the first container of pod `ns`/`name`.
    pub fn start(
        k: &TestCluster,
        ns: &str,
        name: &str,
        root: &Path,
        opts: &PodOptions,
    ) -> PodProcess {
        let pod = get_json(k, &["pod", name, "-n", ns]);
        let spec = &pod["spec"];
        let c = &spec["containers"][0];
        let root = root.join(name);
        std::fs::create_dir_all(&root).unwrap();

        // Volumes.
        let volumes: BTreeMap<String, Value> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (v["name"].as_str().unwrap().to_string(), v.clone()))
            .collect();
        let mut mounts = Vec::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let path = m["mountPath"].as_str().unwrap().to_string();
            let dir = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&dir).unwrap();
            let vol = &volumes[m["name"].as_str().unwrap()];
            if let Some(secret) = vol["secret"]["secretName"].as_str() {
                let data = secret_data(k, ns, secret);
                let items: Vec<(String, String)> = match vol["secret"]["items"].as_array() {
                    Some(items) => items
                        .iter()
                        .map(|i| {
                            (
                                i["key"].as_str().unwrap().to_string(),
                                i["path"].as_str().unwrap().to_string(),
                            )
                        })
                        .collect(),
                    None => data.keys().map(|key| (key.clone(), key.clone())).collect(),
                };
                for (key, file) in items {
                    let bytes = data
                        .get(&key)
                        .unwrap_or_else(|| panic!("pod {name}: Secret {secret} has no key {key}"));
                    std::fs::write(dir.join(file), bytes).unwrap();
                }
            }
            mounts.push(path);
        }

        // Ports: each containerPort gets a free local port.
        let mut ports = BTreeMap::new();
        let mut port_rewrites = Vec::new();
        for p in c["ports"].as_array().into_iter().flatten() {
            let port = p["containerPort"].as_u64().unwrap() as u16;
            let local = crate::procs::free_addr();
            ports.insert(port, local);
            port_rewrites.push((format!("0.0.0.0:{port}"), local.to_string()));
        }
        let fix = |s: &str| {
            let mut s = s.to_string();
            for (from, to) in opts.rewrites.iter().chain(&port_rewrites) {
                s = s.replace(from.as_str(), to);
            }
            remap_paths(&s, &mounts, &root)
        };

        // Env, resolved as the kubelet resolves it.
        let mut env: Vec<(String, String)> = Vec::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let key = e["name"].as_str().unwrap().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                fix(v)
            } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "metadata.name" => name.to_string(),
                    "metadata.namespace" => ns.to_string(),
                    "metadata.uid" => pod["metadata"]["uid"].as_str().unwrap().to_string(),
                    "spec.nodeName" => spec["nodeName"].as_str().unwrap_or("").to_string(),
                    "status.podIP" => "127.0.0.1".into(),
                    other => panic!("pod {name}: fieldRef {other} is not supported here"),
                }
            } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
                let data = secret_data(k, ns, r["name"].as_str().unwrap());
                let bytes = &data[r["key"].as_str().unwrap()];
                String::from_utf8(bytes.clone()).unwrap()
            } else {
                e["value"].as_str().unwrap_or("").to_string()
            };
            env.push((key, value));
        }
        env.extend(opts.extra_env.iter().cloned());

        // Kubernetes credentials: the pod's ServiceAccount, unless opted out.
        if spec["automountServiceAccountToken"].as_bool() != Some(false) {
            let sa = spec["serviceAccountName"].as_str().unwrap_or("default");
            let kc = k.token_kubeconfig(ns, sa, &root.join("kubeconfig"));
            env.push(("KUBECONFIG".into(), kc.display().to_string()));
        }

        let command: Vec<String> = c["command"]
            .as_array()
            .expect("the chart's containers name their command")
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let program = command[0]
            .strip_prefix("/usr/local/bin/")
            .map(crate::binary)
            .unwrap_or_else(|| panic!("pod {name}: unexpected command {}", command[0]));
        let args: Vec<String> = command[1..]
            .iter()
            .chain(
                c["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
                    .iter(),
            )
            .map(|a| fix(a))
            .collect();
        let log = std::fs::File::create(root.join("log")).unwrap();
        let child = Command::new(&program)
            .args(&args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(env)
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        PodProcess {
            name: name.to_string(),
            root,
            child,
            ports,
        }
    }

    /// The local address standing for `containerPort`.
    pub fn port(&self, container_port: u16) -> SocketAddr {
        self.ports[&container_port]
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("log")).unwrap_or_default()
    }

    /// Waits for the process to exit; panics with its log after `secs`.
    pub fn wait(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pod {} still running after {secs}s:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, as the kubelet sends when the pod is deleted; SIGKILL after 10 s.
    pub fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.running() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Marks a pod KWOK leaves alone (annotation `kwok.x-k8s.io/status=custom`)
/// as finished, as the kubelet does when its container exits.
pub fn finish_pod(k: &TestCluster, ns: &str, name: &str, exit_code: i32) {
    let phase = if exit_code == 0 {
        "Succeeded"
    } else {
        "Failed"
    };
    let patch = serde_json::json!({"status": {"phase": phase}}).to_string();
    kubectl_ok(
        &k.admin_kubeconfig,
        &[
            "patch",
            "pod",
            name,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ],
        None,
    );
}

#[cfg(test)]
mod tests {
    use super::remap_paths;
    use std::path::Path;

    #[test]
    fn mount_paths_move_under_the_root() {
        let mounts = vec![
            "/etc/streamspace/tls".to_string(),
            "/var/lib/streamspace".to_string(),
            "/tmp".to_string(),
        ];
        let root = Path::new("/tmp/pods/cp");
        assert_eq!(
            remap_paths("--tls-cert=/etc/streamspace/tls/tls.crt", &mounts, root),
            "--tls-cert=/tmp/pods/cp/etc/streamspace/tls/tls.crt"
        );
        assert_eq!(
            remap_paths("sqlite:///var/lib/streamspace/x.db", &mounts, root),
            "sqlite:///tmp/pods/cp/var/lib/streamspace/x.db"
        );
        // Not a mount: a longer name sharing the prefix, and plain words.
        assert_eq!(
            remap_paths("/var/lib/streamspace-agent /tmpfoo tmp", &mounts, root),
            "/var/lib/streamspace-agent /tmpfoo tmp"
        );
    }
}
