//! Manifests of the system we replace, verbatim from its bug reports: the
//! tests apply them as an operator following the report would.

/// Seed 000 (missing Kubernetes controller), reproduction step 1.
pub const SEED_000_REPRODUCTION: &str = r#"apiVersion: stream.space/v1alpha1
kind: Session
metadata:
  name: test-admin-firefox
  namespace: streamspace
spec:
  user: admin
  template: firefox-browser
  state: running
  resources:
    requests:
      memory: 1Gi
      cpu: 500m
    limits:
      memory: 1Gi
      cpu: 500m
  persistentHome: false
  idleTimeout: 30m
"#;

/// Seed 000, testing plan step 2.
pub const SEED_000_TESTING_PLAN: &str = r#"apiVersion: stream.space/v1alpha1
kind: Session
metadata:
  name: test-controller-firefox
  namespace: streamspace
spec:
  user: admin
  template: firefox-browser
  state: running
  resources:
    requests:
      memory: 1Gi
      cpu: 500m
    limits:
      memory: 1Gi
      cpu: 500m
  persistentHome: false
"#;
