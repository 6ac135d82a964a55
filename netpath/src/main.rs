//! `netpath`: the agent (`run`) and the operator's CLI (netpath::cli parses and
//! dispatches).

fn main() -> std::process::ExitCode {
    netpath::cli::main()
}
