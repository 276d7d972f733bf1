using System.Net;
using Grpc.Core;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Dashboard;
using Rbs.Gateway.Health;
using Rbs.Gateway.Registration;
using Rbs.Gateway.Security;
using Rbs.Gateway.Tunnel;
using Rbs.Shared.Hosting;
using Rbs.Shared.Telemetry;
using Yarp.ReverseProxy.Configuration;
using Yarp.ReverseProxy.Forwarder;

namespace Rbs.Gateway.Hosting;

internal static class GatewayHostingExtensions
{
    public const string OrchestratorRoutePrefix = "/rbs.v1.Orchestrator/";
    public const string AgentRoutePrefix = "/rbs.v1.Agent/";

    /// <summary>The agent's services a client may call through a tunnel; each needs the route and session token.</summary>
    public static readonly string[] AgentServicePrefixes = [AgentRoutePrefix, "/rbs.v1.WorkspaceSync/", "/rbs.v1.Outputs/"];

    /// <summary>Options, tokens, tunnels, the forwarder and both Kestrel endpoints.</summary>
    public static WebApplicationBuilder AddGateway(this WebApplicationBuilder builder)
    {
        CapHttp2StreamWindow(builder.Configuration);
        var services = builder.Services;
        services.AddOptions<GatewayOptions>()
            .BindConfiguration(GatewayOptions.SectionName)
            .ValidateDataAnnotations()
            .Validate(o => !string.IsNullOrWhiteSpace(o.TokenKey) || !string.IsNullOrWhiteSpace(o.TokenKeyFile),
                "A token key is required: set Gateway:TokenKey (base64, >= 32 bytes) or pass --token-key-file (the orchestrator's key).")
            .Validate(o => Uri.TryCreate(o.OrchestratorAddress, UriKind.Absolute, out var uri) && uri.Scheme is "http" or "https",
                "Gateway:OrchestratorAddress must be an absolute http:// or https:// address.")
            .Validate(o => !o.IsReplica || (Uri.TryCreate(o.AdvertiseAgentAddress, UriKind.Absolute, out var advertised) && advertised.Scheme is "http" or "https"),
                "Gateway:AdvertiseAgentAddress (--advertise-agent-address) must be an absolute http:// or https:// address of this replica's agent endpoint, e.g. http://10.0.0.5:8081.")
            .Validate(o => o.ReplicaHeartbeatInterval > TimeSpan.Zero && o.DrainTimeout > TimeSpan.FromSeconds(1),
                "Gateway:ReplicaHeartbeatInterval must be positive and Gateway:DrainTimeout longer than 1 s.")
            .Validate(o => o.TunnelKeepAliveInterval > TimeSpan.Zero && o.TunnelKeepAliveTimeout > TimeSpan.Zero && o.TunnelAcquireTimeout > TimeSpan.Zero
                && o.TunnelProbeTimeout > TimeSpan.Zero && o.AgentStreamIdleTimeout > TimeSpan.Zero && o.JoinTokenRenewalLifetime > TimeSpan.Zero && o.OrchestratorCallTimeout > TimeSpan.Zero,
                "Gateway timeouts and intervals must be positive.")
            .Validate(o => o.HeapLimit == 0 || o.HeapLimit >= GatewayOptions.MinHeapLimit,
                $"Gateway:HeapLimit (--heap-limit) must be 0 (the runtime's own limit) or at least {GatewayOptions.MinHeapLimit} bytes (64 MiB), in bytes, e.g. 335544320 for 320 MiB.")
            .ValidateOnStart();
        services.AddSingleton<IValidateOptions<GatewayOptions>, GatewayTokenKeyValidator>();

        services.TryAddSingleton(TimeProvider.System);
        // Handshake timeout, connection and stream limits of both endpoints (Gateway:Limits; docs/limits.md).
        services.AddServerLimits(GatewayOptions.SectionName);
        // Tokens: JwtBearer and the join/session/internal policies (Security/GatewayAuthentication.cs).
        services.AddGatewayAuthentication();
        // Metrics, traces, /healthz and /readyz (Shared/Telemetry; docs/operations.md); ready while the orchestrator answers.
        services.AddRbsTelemetry(builder.Configuration, GatewayOptions.SectionName, "rbs-gateway", TunnelMetrics.MeterName)
            .AddCheck<OrchestratorLinkHealthCheck>("orchestrator");
        services.AddSingleton<OrchestratorLinkHealthCheck>();
        services.AddSingleton<TunnelMetrics>();
        services.AddSingleton<TunnelGauges>();
        services.AddSingleton<AgentTunnelRegistry>();
        services.AddSingleton<AgentStreamForwarder>();
        services.AddSingleton<GatewayHeap>();
        // The relay: agents' raw relay tunnels and client connections spliced onto them (Relay/). Its listener is a
        // hosted service, so it is bound before Kestrel starts and the first tunnel's 101 announces its port.
        services.AddSingleton<Relay.RelayMetrics>();
        services.AddSingleton<Relay.RelayTunnelPool>();
        services.AddSingleton<Relay.RelayTunnelListener>();
        services.AddHostedService(sp => sp.GetRequiredService<Relay.RelayTunnelListener>());
        services.AddSingleton<Relay.ClientRelay>();
        services.AddSingleton<Rbs.Gateway.Registration.OrchestratorChannel>();
        services.AddSingleton<Rbs.Gateway.Registration.AgentDirectoryClient>();
        // rbs.v1.GatewayRegistry (Registration/GatewayRegistryService.cs). Unknown services stay a 404, as before the
        // gateway served gRPC itself: no catch-all "unimplemented" routes on either endpoint.
        services.AddGrpc(o => o.IgnoreUnknownServices = true);
        services.AddSingleton<GatewayEndpoints>();
        // Several replicas (Gateway:AdvertiseAgentAddress): the replica set, its heartbeat and the drain (Replicas/).
        services.AddSingleton<Replicas.GatewayReplicaSet>();
        services.AddSingleton<Replicas.GatewayDrain>();
        services.AddHostedService<Replicas.ReplicaHeartbeatService>();
        // Kestrel's graceful stop must outlast the drain, so streams in flight can finish.
        services.AddOptions<HostOptions>().Configure<IOptions<GatewayOptions>>((host, options) =>
        {
            if (options.Value.IsReplica && host.ShutdownTimeout < options.Value.DrainTimeout + TimeSpan.FromSeconds(2))
            {
                host.ShutdownTimeout = options.Value.DrainTimeout + TimeSpan.FromSeconds(2);
            }
        });
        services.AddHostedService<GatewayReadyAnnouncer>();
        // The live dashboard on the public endpoint (Dashboard/, docs/dashboard.md).
        services.AddDashboard();

        services.AddOptions<KestrelServerOptions>()
            .Configure<IOptions<GatewayOptions>, GatewayEndpoints>((kestrel, options, endpoints) => endpoints.Configure(kestrel, options.Value));

        services.AddReverseProxy();
        services.AddSingleton<IProxyConfigProvider>(sp => OrchestratorProxyConfig(sp.GetRequiredService<IOptions<GatewayOptions>>().Value));
        return builder;
    }

    /// <summary>
    /// SocketsHttpHandler reads its dynamic-window cap once per process, from the environment, when it is first
    /// used; so it is set here, before any handler exists (an operator's explicit value wins). See
    /// <see cref="GatewayOptions.TunnelStreamMaxWindowSize"/>.
    /// </summary>
    private static void CapHttp2StreamWindow(IConfiguration configuration)
    {
        const string Variable = "DOTNET_SYSTEM_NET_HTTP_SOCKETSHTTPHANDLER_FLOWCONTROL_MAXSTREAMWINDOWSIZE";
        if (!string.IsNullOrEmpty(Environment.GetEnvironmentVariable(Variable)))
        {
            return;
        }

        var configured = configuration[$"{GatewayOptions.SectionName}:{nameof(GatewayOptions.TunnelStreamMaxWindowSize)}"];
        var cap = int.TryParse(configured, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var value)
            ? value
            : new GatewayOptions().TunnelStreamMaxWindowSize;
        Environment.SetEnvironmentVariable(Variable, cap.ToString(System.Globalization.CultureInfo.InvariantCulture));
    }

    public static WebApplication MapGateway(this WebApplication app)
    {
        // A single gateway cuts its tunnels at once; a replica drains first (Replicas/GatewayDrain.cs).
        var drain = app.Services.GetRequiredService<Replicas.GatewayDrain>();
        app.Lifetime.ApplicationStopping.Register(drain.Begin);

        // The gauges are observed from their creation on: create them before the first scrape.
        app.Services.GetRequiredService<TunnelGauges>();
        var telemetry = app.Services.GetRequiredService<IOptions<RbsTelemetryOptions>>().Value;

        // Client routes only on the public endpoint; tunnels and the orchestrator's registry only on the agent endpoint.
        app.Use((context, next) =>
        {
            var path = context.Request.Path;
            // Case-insensitive, as routing is: no other spelling of the registry's path reaches it on the public endpoint.
            var agentPath = path.StartsWithSegments("/tunnel") || path.StartsWithSegments(GatewayRegistryEndpoints.RoutePrefix.TrimEnd('/'));
            // Probes on either endpoint; the metrics only on the cluster-internal agent endpoint.
            agentPath |= telemetry.MetricsEnabled && path.StartsWithSegments(telemetry.MetricsPath.Trim());
            var allowed = path.StartsWithSegments(RbsTelemetry.LivenessPath) || path.StartsWithSegments(RbsTelemetry.ReadinessPath)
                || (agentPath ? GatewayEndpoints.IsAgent(context) : GatewayEndpoints.IsPublic(context));
            if (!allowed)
            {
                context.Response.StatusCode = StatusCodes.Status404NotFound;
                return Task.CompletedTask;
            }

            return next(context);
        });
        app.UseWebSockets();
        // Before authorization, so a refused registry call is answered in gRPC-Web too (RefusalWriter).
        app.UseGrpcWeb();
        // After the endpoint check: a route not served on this endpoint is a 404 whatever its token.
        app.UseAuthorization();

        app.MapRbsTelemetry();
        app.MapAgentTunnels();
        app.MapGatewayRegistry();
        app.MapDashboard();
        foreach (var prefix in AgentServicePrefixes)
        {
            app.MapPost(prefix + "{**method}", (HttpContext context, AgentStreamForwarder forwarder) => forwarder.ForwardAsync(context))
                .RequireAuthorization(GatewayAuthentication.Session);
        }

        app.MapReverseProxy(proxy => proxy.Use(async (context, next) =>
        {
            await next();
            // The orchestrator is down or unreachable: say so in gRPC terms instead of a bare 502, and say that it is the
            // hop behind the gateway (the client only knows the gateway's address).
            if (context.Features.Get<IForwarderErrorFeature>() is { } error && !context.Response.HasStarted && !context.RequestAborted.IsCancellationRequested)
            {
                var address = context.RequestServices.GetRequiredService<IOptions<GatewayOptions>>().Value.OrchestratorAddress;
                await GrpcResponses.WriteStatusAsync(context, StatusCode.Unavailable, OrchestratorFailure(address, error));
            }
        }));
        return app;
    }

    /// <summary>The status message when a proxied orchestrator call fails before its response started.</summary>
    internal static string OrchestratorFailure(string address, IForwarderErrorFeature error)
    {
        var reason = $"{error.Error}: {error.Exception?.GetBaseException().Message.TrimEnd('.')}";
        return error.Error is ForwarderError.Request or ForwarderError.RequestTimedOut
            ? $"the gateway is up, but cannot reach the orchestrator at {address} behind it ({reason}). " +
                "The orchestrator is down or unreachable from the gateway: its operator must start it or fix the gateway's --orchestrator"
            : $"the gateway reached the orchestrator at {address}, but the call failed ({reason}). " +
                "If it keeps failing, the orchestrator's log says why";
    }

    private static InMemoryConfigProvider OrchestratorProxyConfig(GatewayOptions options) => new(
        [
            new RouteConfig
            {
                RouteId = "orchestrator",
                ClusterId = "orchestrator",
                Match = new RouteMatch { Path = OrchestratorRoutePrefix + "{**method}" },
            },
        ],
        [
            new ClusterConfig
            {
                ClusterId = "orchestrator",
                Destinations = new Dictionary<string, DestinationConfig>(StringComparer.Ordinal)
                {
                    ["orchestrator"] = new() { Address = options.OrchestratorAddress },
                },
                HttpRequest = new ForwarderRequestConfig
                {
                    // gRPC needs HTTP/2 end to end; h2c only works with prior knowledge.
                    Version = HttpVersion.Version20,
                    VersionPolicy = HttpVersionPolicy.RequestVersionExact,
                    ActivityTimeout = options.OrchestratorCallTimeout,
                },
            },
        ]);
}
