using Rbs.Agent.Hosting;

// rbs-agent: runs the configured build tool for ExecuteCommand streams. Flags and keys: Hosting/AgentHost.cs;
// --help and start-up errors are Shared/Hosting's.
return await AgentHost.RunAsync(args);
