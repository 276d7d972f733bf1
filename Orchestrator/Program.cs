using Rbs.Orchestrator.Hosting;

var builder = OrchestratorHost.CreateBuilder(args);
builder.Services.AddOrchestrator(builder.Configuration);
var app = builder.Build();
app.MapOrchestrator();
return await OrchestratorHost.RunAsync(app);
