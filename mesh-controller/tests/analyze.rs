#[test]
fn dump() { std::fs::write("/tmp/crddump/crds.yaml", mesh_controller::crd::crds_yaml()).unwrap(); }
