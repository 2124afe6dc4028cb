//! Control served in-process by `hookrelay_control::run` on a free loopback port
//! ([`hookrelay_tests::inproc::InProcess`]): the one way control's crate tests start it. Every test crate that
//! includes this module uses all of it; anything shared only by some belongs in `hookrelay-tests`.

use std::path::Path;

use hookrelay_control::Config;
use hookrelay_tests::InProcess;

/// Starts control with the defaults for a fresh data dir (`data/` in the server's temporary directory), changed by
/// `configure`, which also gets that directory for the files the config names.
pub async fn start_control(configure: impl FnOnce(&Path, &mut Config)) -> InProcess {
    InProcess::start(|dir, listener, shutdown| {
        let mut config = Config::new(dir.join("data"));
        configure(dir, &mut config);
        hookrelay_control::run(config, listener, shutdown)
    })
    .await
}
