//! Builds the C shim of the `fabric` feature (csrc/fabric_shim.c) against the system's
//! libfabric, found with pkg-config. Without the feature there is nothing to do, and the
//! crate needs no C library or header.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "fabric")]
    fabric::build();
}

#[cfg(feature = "fabric")]
mod fabric {
    pub fn build() {
        println!("cargo:rerun-if-changed=csrc/fabric_shim.c");
        let lib = match pkg_config::Config::new().atleast_version("1.10").probe("libfabric") {
            Ok(lib) => lib,
            Err(e) => panic!(
                "\n\nThe `fabric` feature of rayhpc-transport needs libfabric >= 1.10 with its \
                 headers and pkg-config file (libfabric.pc).\nOn Debian or Ubuntu: \
                 apt-get install libfabric-dev\nFor a libfabric installed elsewhere, add its \
                 lib/pkgconfig directory to PKG_CONFIG_PATH.\npkg-config said: {e}\n\n"
            ),
        };
        let mut build = cc::Build::new();
        build.file("csrc/fabric_shim.c").warnings(true).extra_warnings(true);
        for dir in &lib.include_paths {
            build.include(dir);
        }
        build.compile("rayhpc_fabric_shim");
        // The shim uses pthread mutexes; glibc >= 2.34 has them in libc, older ones do not.
        println!("cargo:rustc-link-lib=pthread");
    }
}
