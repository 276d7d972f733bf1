using Rbs.Agent.Hosting;

// rbs-agent: runs the configured build tool for ExecuteCommand streams. Flags and keys: Hosting/AgentOptions.cs.
var builder = AgentHost.CreateBuilder(args);
builder.Services.AddAgent(builder.Configuration);
var app = builder.Build();
app.MapAgent();
await app.RunAsync();
