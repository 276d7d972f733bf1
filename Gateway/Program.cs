using Rbs.Gateway.Hosting;

var builder = WebApplication.CreateBuilder(args);
builder.Configuration.AddCommandLine(args, GatewayOptions.SwitchMappings);
builder.AddGateway();

var app = builder.Build();
app.MapGateway();
await app.RunAsync();
