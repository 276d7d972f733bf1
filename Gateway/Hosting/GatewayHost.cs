using Rbs.Shared.Hosting;

namespace Rbs.Gateway.Hosting;

/// <summary>Builds and runs the gateway's WebApplication (Program.cs; in-process tests call <see cref="GatewayHostingExtensions.AddGateway"/>).</summary>
internal static class GatewayHost
{
    private const string Section = GatewayOptions.SectionName;

    /// <summary>rbs-gateway's command line: friendly flags → <c>Gateway:*</c> keys; every other key as <c>--Gateway:Key=value</c>.</summary>
    public static readonly ServerCommandLine CommandLine = new(
        "rbs-gateway",
        "the single public ingress for jbazel (GetServer proxied to the orchestrator, ExecuteCommand forwarded over the agents' outbound tunnels).",
        [
            new("--public-listen", $"{Section}:{nameof(GatewayOptions.PublicListen)}", "HOST:PORT", "127.0.0.1:8080", "Client endpoint (jbazel): gRPC over HTTP/2, TLS with --certificate."),
            new("--agent-listen", $"{Section}:{nameof(GatewayOptions.AgentListen)}", "HOST:PORT", "127.0.0.1:8081", "Agent endpoint: tunnel WebSockets and the orchestrator's registry (rbs.v1.GatewayRegistry, gRPC-Web); keep it cluster-internal."),
            new("--orchestrator", $"{Section}:{nameof(GatewayOptions.OrchestratorAddress)}", "URL", "http://127.0.0.1:50051", "Where GetServer calls are proxied (h2c or https)."),
            new("--token-key-file", $"{Section}:{nameof(GatewayOptions.TokenKeyFile)}", "FILE", "none (or Gateway:TokenKey); one is required", "File holding the base64 token key shared with the orchestrator; it signs every token."),
            new("--accepted-token-keys-file", $"{Section}:{nameof(GatewayOptions.AcceptedTokenKeysFile)}", "FILE", "none", "Further base64 keys (one per line) tokens may be signed with during a key rotation."),
            new("--certificate", $"{Section}:{nameof(GatewayOptions.CertificatePath)}", "FILE", "none (h2c)", "PFX/PKCS#12 certificate for TLS on the public endpoint (password: Gateway:CertificatePassword)."),
            new("--advertise-agent-address", $"{Section}:{nameof(GatewayOptions.AdvertiseAgentAddress)}", "URL", "none (a single gateway)", "This replica's agent endpoint as agents dial it directly (http://POD_IP:8081); makes the gateway one of several replicas."),
            new("--replica-id", $"{Section}:{nameof(GatewayOptions.ReplicaId)}", "ID", "host name + random suffix", "This replica's id, unique among live replicas (the pod name)."),
            new("--relay-listen", $"{Section}:{nameof(GatewayOptions.RelayListen)}", "HOST:PORT|off", "the agent endpoint's host, an ephemeral port", "Raw relay tunnels of agents (cluster-internal): relayed client connections end at the agent's HTTP/2."),
            new("--heap-limit", $"{Section}:{nameof(GatewayOptions.HeapLimit)}", "BYTES", "0 (the runtime's: 75% of a container's memory limit)", "GC heap hard limit; new streams wait while the heap is above Gateway:StreamAdmissionHeapPercent (85) of the limit in force."),
            new("--ready-file", $"{Section}:{nameof(GatewayOptions.ReadyFile)}", "FILE", "none", "Written once both endpoints listen: {\"publicAddress\",\"agentAddress\",\"pid\"}."),
            .. Rbs.Shared.Telemetry.RbsTelemetryOptions.Flags(Section),
        ],
        "--public-listen, --agent-listen",
        ServerLimitsOptions.Describe(Section));

    /// <summary>The whole gateway: configuration (appsettings, <c>Gateway__*</c> env, flags), services, endpoints.</summary>
    /// <exception cref="CommandLineException">The arguments are not a valid command line.</exception>
    public static WebApplication Build(string[] args)
    {
        var builder = ServerHost.CreateBuilder(CommandLine, args);
        // Process-wide, so only here: in-process test hosts share the test runner's heap.
        var heapLimit = GatewayHeap.ApplyLimit(builder.Configuration);
        builder.AddGateway();
        var app = builder.Build();
        app.Services.GetRequiredService<GatewayHeap>().LogLimit(heapLimit);
        app.MapGateway();
        return app;
    }

    /// <summary>Program.cs: <c>--help</c>, or run until shutdown; a bad setting or failed start is one line on stderr (see <see cref="ServerHost"/>).</summary>
    public static Task<int> RunAsync(string[] args) => ServerHost.RunAsync(CommandLine, args, Build);
}
