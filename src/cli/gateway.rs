//! `lockstep gateway`.

use crate::error::Error;
use crate::gateway::Gateway;
use crate::gateway::config::GatewayConfig;
use crate::startup::shutdown_signal;

/// Runs the gateway described by the file at `path` until SIGTERM or
/// SIGINT.
pub fn run(path: &std::path::Path) -> Result<(), Error> {
    let config = GatewayConfig::load(path)?;
    let runtime = super::long_running_runtime()?;
    runtime.block_on(async {
        let gateway = Gateway::bind(&config).await?;
        for (name, addr) in gateway.addresses() {
            let route = config.routes.iter().find(|r| r.name == name);
            let (target, resource) = route.map_or(("?", "?"), |r| (&r.target, &r.resource));
            eprintln!("lockstep gateway: route {name} on {addr} → {target} (resource {resource})");
        }
        gateway.run(shutdown_signal()).await;
        eprintln!("lockstep gateway stopped");
        Ok(())
    })
}
