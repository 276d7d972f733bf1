using Rbs.Orchestrator.Hosting;

// rbs-orchestrator: flags, --help and start-up errors are Shared/Hosting's; the services are AddOrchestrator's.
return await OrchestratorHost.RunAsync(args);
