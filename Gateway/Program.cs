using Rbs.Gateway.Hosting;

// rbs-gateway: flags, --help and start-up errors are Shared/Hosting's; the services are AddGateway's.
return await GatewayHost.RunAsync(args);
