//! `berth-executor --config <state_dir>/shim.json`: the per-container shim. All logic lives in
//! [`berth_executor::shim`]; see there for the ordered checklist.

fn main() {
    let code = berth_executor::shim::main_with_args(std::env::args_os().skip(1));
    std::process::exit(code);
}
