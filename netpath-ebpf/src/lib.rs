// Empty on purpose: the programs are in the `netpath` binary target (src/main.rs). This
// library target lets `netpath` depend on this crate so that cargo rebuilds the agent
// when the programs change (see netpath/build.rs).
#![no_std]
