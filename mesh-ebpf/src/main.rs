//! Weft's eBPF programs. One module per attach point; shared map definitions in `maps`.
//!
//! Conventions: a thin `#[program]` entry calls a `try_*` function; every decision bumps a counter in
//! `STATS` (indexes in `mesh_common::stats`).
#![no_std]
#![no_main]

mod connect;
mod maps;
mod sk_lookup;
mod skmsg;
mod sockops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
