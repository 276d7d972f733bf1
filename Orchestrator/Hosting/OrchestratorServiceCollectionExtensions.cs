using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Allocation;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Orchestrator.Gateway;
using Rbs.Orchestrator.Lifecycle;
using Rbs.Orchestrator.Security;
using Rbs.Orchestrator.State;
using Rbs.Orchestrator.State.Postgres;
using Rbs.Shared.Telemetry;

namespace Rbs.Orchestrator.Hosting;

/// <summary>Registration of the orchestrator's services and endpoints.</summary>
internal static class OrchestratorServiceCollectionExtensions
{
    /// <summary>The grpc.health.v1 service name of liveness; the empty name is readiness.</summary>
    public const string LivenessService = "liveness";

    /// <summary>
    /// Everything the orchestrator needs. Seams: the state store is <c>TryAdd</c>ed (register another
    /// <see cref="IStateStore"/> first to replace SQLite); compute backends are keyed singletons of
    /// <see cref="IComputeService"/> by backend name ("process" here; "kubernetes" registers its own), and
    /// <c>Orchestrator:Backend</c> picks one.
    /// </summary>
    public static IServiceCollection AddOrchestrator(this IServiceCollection services, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        services.AddOptions<OrchestratorOptions>().BindConfiguration(OrchestratorOptions.SectionName).ValidateOnStart();
        services.AddSingleton<IValidateOptions<OrchestratorOptions>, OrchestratorOptionsValidator>();
        services.AddOptions<ProcessComputeOptions>().BindConfiguration(ProcessComputeOptions.SectionName).ValidateOnStart();
        services.AddSingleton<IValidateOptions<ProcessComputeOptions>, ProcessComputeOptionsValidator>();
        services.AddSingleton<UserIsolation>();
        services.AddOptions<OrchestratorGatewayOptions>().BindConfiguration(OrchestratorGatewayOptions.SectionName).ValidateOnStart();
        services.AddSingleton<IValidateOptions<OrchestratorGatewayOptions>, OrchestratorGatewayOptionsValidator>();
        services.AddSingleton<ApiKeyAuthenticator>();
        services.AddSingleton<GatewayClient>();

        services.TryAddSingleton(TimeProvider.System);
        services.AddSingleton<ReplicaIdentity>();
        if (configuration.HasPostgresStateStore())
        {
            services.AddPostgresStateStore(configuration);
        }

        services.TryAddSingleton<IStateStore, SqliteStateStore>();
        services.TryAddSingleton<IAgentStatusClient, GrpcAgentStatusClient>();

        services.AddKeyedSingleton<IComputeService, ProcessComputeService>(ProcessComputeService.BackendName);
        // Only the configured Kubernetes backend is registered: its options are validated at start-up.
        var backend = configuration.GetSection(OrchestratorOptions.SectionName).Get<OrchestratorOptions>()?.GetBackend();
        if (backend == OrchestratorOptions.KubernetesBackend)
        {
            services.AddKubernetesCompute(configuration);
        }

        services.AddSingleton(ResolveComputeService);

        services.AddSingleton<AllocationMetrics>();
        services.AddSingleton<AgentAllocator>();
        // Order matters: the isolation check, then adoption (both in StartingAsync), run before the server accepts calls.
        services.AddHostedService<UserIsolationStartupCheck>();
        services.AddHostedService<AgentAdoptionService>();
        services.AddHostedService<IdleReaper>();
        services.AddSingleton<ListeningAnnouncer>();
        services.AddHostedService(sp => sp.GetRequiredService<ListeningAnnouncer>());

        // Metrics, traces, /healthz and /readyz (Shared/Telemetry; docs/operations.md); ready while the state store answers.
        services.AddRbsTelemetry(configuration, OrchestratorOptions.SectionName, "rbs-orchestrator", AllocationMetrics.MeterName)
            .AddCheck<StateStoreHealthCheck>("state_store");
        services.AddGrpc();
        // grpc.health.v1 for the kubelet's grpc probes (this port is h2c only): "" is readiness (every check), "liveness"
        // only the cheap ones (the process answers; what the gateway's readiness asks).
        services.AddGrpcHealthChecks(o =>
        {
            o.Services.Map(string.Empty, _ => true);
            o.Services.Map(LivenessService, check => check.Tags.Contains(RbsTelemetry.LiveTag));
        });
        return services;
    }

    public static IEndpointRouteBuilder MapOrchestrator(this IEndpointRouteBuilder endpoints)
    {
        endpoints.MapGrpcService<OrchestratorGrpcService>();
        // For the gateway only (internal token); the gateway's public endpoint never routes it.
        endpoints.MapGrpcService<AgentDirectoryService>();
        // The gateway's dashboard: sign-in with an API key and the user's agents (internal token; docs/dashboard.md).
        endpoints.MapGrpcService<DashboardDirectoryService>();
        endpoints.MapGrpcHealthChecksService();
        endpoints.MapRbsTelemetry();
        return endpoints;
    }

    private static IComputeService ResolveComputeService(IServiceProvider services)
    {
        var backend = services.GetRequiredService<IOptions<OrchestratorOptions>>().Value.GetBackend();
        return services.GetKeyedService<IComputeService>(backend)
            ?? throw new InvalidOperationException(
                $"compute backend '{backend}' is not registered; use --local-mode (process backend) or Orchestrator:Backend=kubernetes");
    }
}
