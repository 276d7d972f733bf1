using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using Rbs.Agent.Bazelrc;
using Rbs.Agent.Dashboard;
using Rbs.Agent.Execution;
using Rbs.Agent.Execution.Reattach;
using Rbs.Agent.Lifetime;
using Rbs.Agent.Outputs;
using Rbs.Agent.Sync;
using Rbs.Agent.Tunnel;
using Rbs.Shared.Hosting;
using Rbs.Shared.Telemetry;

namespace Rbs.Agent.Hosting;

/// <summary>Registers the agent: options, gRPC services, the direct (listening) endpoint, and lifetime services.</summary>
internal static class AgentServiceCollectionExtensions
{
    public static IServiceCollection AddAgent(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<AgentOptions>()
            .BindConfiguration(AgentOptions.SectionName)
            .ValidateOnStart();
        services.AddSingleton<IValidateOptions<AgentOptions>, AgentOptionsValidator>();

        services.TryAddSingleton(TimeProvider.System);
        services.AddSingleton<CommandTracker>();
        services.AddSingleton<CommandRunner>();
        // What the gateway's dashboard watches (rbs.v1.CommandWatch, docs/dashboard.md).
        services.AddSingleton<CommandLog>();
        services.AddSingleton<CommandMetrics>();
        services.AddSingleton<CommandAudit>();
        services.AddSingleton<SyncMetrics>();
        // Metrics, traces, /healthz and /readyz (Shared/Telemetry; docs/operations.md); ready while the workspace is there.
        services.AddRbsTelemetry(configuration, AgentOptions.SectionName, "rbs-agent", CommandMetrics.MeterName)
            .AddCheck<WorkspaceHealthCheck>("workspace");
        services.AddOptions<ReattachOptions>()
            .BindConfiguration(ReattachOptions.SectionName)
            .ValidateOnStart();
        services.AddSingleton<IValidateOptions<ReattachOptions>, ReattachOptionsValidator>();
        services.AddSingleton<ResumableCommands>();
        services.AddSingleton<BazelWrapperShortcut>();
        services.AddSingleton<BuildToolServers>();
        services.AddAgentOutputs();
        services.AddSingleton<ClientBazelrcStore>();

        services.AddSingleton<DirectAccessKey>();
        services.AddHostedService<DirectAccessKeyLoader>();
        services.AddGrpc(grpc => grpc.Interceptors.Add<DirectAccessInterceptor>());
        // grpc.health.v1 for the kubelet's grpc probes (h2c only): "" is readiness (every check), "liveness" only the
        // cheap ones (the process answers).
        services.AddGrpcHealthChecks(o =>
        {
            o.Services.Map(string.Empty, _ => true);
            o.Services.Map("liveness", check => check.Tags.Contains(RbsTelemetry.LiveTag));
        }).AddCheck<AgentHealthCheck>("agent");

        // Handshake timeout, connection and stream limits (Agent:Limits). Registered before tunnel mode, whose
        // per-tunnel stream limit then wins over the per-connection default.
        services.AddServerLimits(AgentOptions.SectionName);

        // Direct mode: h2c on Agent:Listen. Registered as options configuration so another mode (the tunnel) can add
        // its own listener the same way without touching this one.
        services.AddSingleton<IConfigureOptions<KestrelServerOptions>>(new DirectListener(configuration));
        // 64 KiB blocks for Kestrel's buffers: uploads are read from the socket in large reads (LargeBlockMemoryPool).
        services.AddSingleton<IMemoryPoolFactory<byte>, LargeBlockMemoryPoolFactory>();

        // Give interrupted commands time to finish (SIGINT → grace → SIGTERM → grace → SIGKILL) before Kestrel
        // aborts their streams on shutdown, and then the build tool's servers time to shut down. Bound without validation: HostOptions is resolved while the host is built,
        // and an invalid AgentOptions must fail at start with its own message, not here.
        services.AddOptions<HostOptions>().Configure(host =>
        {
            var agent = new AgentOptions();
            configuration.GetSection(AgentOptions.SectionName).Bind(agent);
            host.ShutdownTimeout = agent.InterruptGracePeriod + agent.TerminateGracePeriod + agent.BuildToolShutdownTimeout + TimeSpan.FromSeconds(10);
        });

        services.AddHostedService<GracefulShutdown>();
        services.AddHostedService<AgentReadyAnnouncer>();
        services.AddHostedService<IdleExit>();
        services.AddWorkspaceSync();
        return services;
    }

    public static WebApplication MapAgent(this WebApplication app)
    {
        app.MapGrpcService<AgentService>();
        app.MapGrpcService<CommandWatchService>();
        app.MapAgentOutputs();
        app.MapGrpcService<WorkspaceSyncService>();
        app.MapGrpcHealthChecksService();
        app.MapRbsTelemetry();
        return app;
    }

    /// <summary>
    /// Reads Agent:Listen straight from configuration: Kestrel's options are resolved while the host is built, before
    /// ValidateOnStart reports an invalid AgentOptions with its own message.
    /// </summary>
    private sealed class DirectListener(IConfiguration configuration) : IConfigureOptions<KestrelServerOptions>
    {
        public void Configure(KestrelServerOptions kestrel)
        {
            var options = new AgentOptions();
            configuration.GetSection(AgentOptions.SectionName).Bind(options);
            if (configuration.IsAgentTunnelEnabled() && configuration[$"{AgentOptions.SectionName}:{nameof(AgentOptions.Listen)}"] is null)
            {
                // Tunnel mode opens no listening socket unless --listen asks for one (pods: kubelet probes; process
                // agents: loopback for direct mode on the same host).
                return;
            }

            if (!ListenAddress.TryParse(options.Listen, out var endPoint, out var port))
            {
                // AgentOptionsValidator reports this with the flag to fix when the host starts.
                return;
            }

            if (endPoint is null)
            {
                kestrel.ListenLocalhost(port, Http2Guarded);
            }
            else
            {
                kestrel.Listen(endPoint, Http2Guarded);
            }

            static void Http2Guarded(ListenOptions listen)
            {
                listen.Protocols = HttpProtocols.Http2;
                // A listening socket: connections that never send a request are closed (tunnels are not guarded).
                listen.UseConnectionGuard();
                // Calls on this listener (unlike those over a tunnel) must carry the access key, when there is one.
                listen.Use(DirectAccessKey.MarkDirectConnections);
            }
        }
    }
}
