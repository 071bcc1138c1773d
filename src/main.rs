fn main() {
    print!("{}", proxmox_netbox_operator::crd::crds_yaml().unwrap());
}
