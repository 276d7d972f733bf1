using Microsoft.AspNetCore.Server.Kestrel.Core;
using Rbs.Shared.Hosting;

namespace Rbs.Orchestrator.Hosting;

/// <summary>Builds and runs the orchestrator's WebApplication; tests host it in-process through here.</summary>
internal static class OrchestratorHost
{
    /// <summary>rbs-orchestrator's command line: friendly flags → configuration keys (<c>--port 0</c> or <c>--port=0</c>).</summary>
    public static readonly ServerCommandLine CommandLine = new(
        "rbs-orchestrator",
        "finds or starts the warm build agent of each (user, repository) for jbazel (gRPC GetServer).",
        [
            new("--local-mode", "Orchestrator:LocalMode", null, "false", "Developer mode: agents are local processes, every caller is the implicit user 'local', listen on 127.0.0.1."),
            new("--backend", "Orchestrator:Backend", "process|kubernetes", "process with --local-mode, else required", "Compute backend that runs the agents."),
            new("--port", "Orchestrator:Port", "PORT", "50051", "gRPC port (h2c); 0 picks a free port, reported on stdout and in the ready file."),
            new("--listen-address", "Orchestrator:ListenAddress", "IP", "127.0.0.1 with --local-mode, else 0.0.0.0", "IP address to listen on."),
            new("--state-path", "Orchestrator:StatePath", "FILE", "~/.local/state/rbs/orchestrator.db", "SQLite state file; agent ready files and logs go to agents/ beside it."),
            new("--postgres", "Orchestrator:Postgres:ConnectionString", "CONNECTION-STRING", "none (SQLite)", "PostgreSQL state store shared by several replicas (or Spanner through PGAdapter)."),
            new("--ready-file", "Orchestrator:ReadyFile", "FILE", "none", "Written once listening: {\"address\":..,\"pid\":..}."),
            new("--workspaces-path", "Orchestrator:WorkspacesPath", "DIR", "workspaces/ beside the state file", "Where process agents that build a synced copy of a client's tree keep it."),
            new("--idle-ttl", "Orchestrator:IdleTtl", "DURATION", "03:00:00", "An agent unused this long, with no running command, is stopped."),
            new("--reap-interval", "Orchestrator:ReapInterval", "DURATION", "00:00:30", "How often idle and dead agents are looked for."),
            new("--agent-start-timeout", "Orchestrator:AgentStartTimeout", "DURATION", "00:00:30", "How long an agent may take to become reachable."),
            new("--allocation-lease-margin", "Orchestrator:AllocationLeaseMargin", "DURATION", "00:00:10", "Lease time beyond --agent-start-timeout before another replica may take over an allocation."),
            new("--agent-path", "Orchestrator:Process:AgentPath", "FILE", "rbs-agent next to rbs-orchestrator, else on PATH", "The rbs-agent executable of the process backend."),
            new("--build-tool", "Orchestrator:Process:BuildTool", "TOOL", "bazel (the agent's default)", "Build tool passed to process agents as --build-tool."),
            new("--user-isolation", "Orchestrator:Process:UserIsolation", "auto|uid|none", "auto", "Process backend with several users: run each user's agents under a uid of their own (auto: when root and API keys name more than one user), or serve only the first user."),
            new("--first-uid", "Orchestrator:Process:FirstUid", "UID", "1900000000", "First uid (and gid) given to an isolated user."),
            new("--uid-count", "Orchestrator:Process:UidCount", "COUNT", "65536", "How many uids from --first-uid on may be given out."),
            new("--max-agents", "Orchestrator:MaxAgents", "COUNT", "16 with the process backend, else none (0)", "Most agents this orchestrator (all replicas on one store) runs for all users together; beyond it GetServer is refused (jbazel exit 50)."),
            new("--max-agents-per-user", "Orchestrator:MaxAgentsPerUser", "COUNT", "4", "Most agents one user may have (0 = no limit)."),
            new("--default-connect-mode", "Orchestrator:DefaultConnectMode", "direct|tunnel", "tunnel when a gateway is configured, else direct", "Connect mode for clients that do not ask for one."),
            new("--api-keys-file", "Orchestrator:ApiKeysFile", "FILE", "none", "Client API keys, one user:key per line; with keys, every GetServer must present one."),
            new("--gateway-public-address", "Orchestrator:Gateway:PublicAddress", "URL", "none (no tunnel mode)", "The gateway's public endpoint as clients dial it."),
            new("--gateway-agent-address", "Orchestrator:Gateway:AgentAddress", "URL", "none", "The gateway's agent endpoint, which agents dial out to."),
            new("--token-key-file", "Orchestrator:Gateway:TokenKeyFile", "FILE", "none", "The base64 token key shared with the gateway; it signs every token."),
            new("--accepted-token-keys-file", "Orchestrator:Gateway:AcceptedTokenKeysFile", "FILE", "none", "Further base64 keys (one per line) tokens may be signed with during a key rotation."),
            .. Rbs.Shared.Telemetry.RbsTelemetryOptions.Flags(OrchestratorOptions.SectionName),
        ],
        "--port, --listen-address",
        ServerLimitsOptions.Describe(OrchestratorOptions.SectionName));

    /// <summary>
    /// The builder with configuration (appsettings, env, flags), logging (to stderr: stdout carries only the
    /// "listening" line) and Kestrel (h2c on the configured address and port, with the connection limits).
    /// </summary>
    /// <param name="args">Command-line arguments.</param>
    /// <param name="contentRoot">Where appsettings.json is read from; default: the current directory.</param>
    /// <exception cref="CommandLineException">The arguments are not a valid command line.</exception>
    public static WebApplicationBuilder CreateBuilder(string[] args, string? contentRoot = null)
    {
        var builder = ServerHost.CreateBuilder(CommandLine, args, contentRoot);
        builder.Logging.AddConsole(console => console.LogToStandardErrorThreshold = LogLevel.Trace);
        builder.Services.AddServerLimits(OrchestratorOptions.SectionName);

        builder.WebHost.ConfigureKestrel((context, kestrel) =>
        {
            // This runs while the app is being built, before ValidateOnStart; invalid settings are left for
            // that step to report as one clear error instead of an exception from deep inside Build().
            OrchestratorOptions options;
            try
            {
                options = context.Configuration.GetSection(OrchestratorOptions.SectionName).Get<OrchestratorOptions>() ?? new();
            }
            catch (InvalidOperationException)
            {
                return;
            }

            if (new OrchestratorOptionsValidator().Validate(null, options).Failed)
            {
                return;
            }

            // gRPC only, cleartext: HTTP/2 with prior knowledge (h2c); HTTP/1 is never negotiated.
            kestrel.Listen(options.GetListenAddress(), options.Port, listen =>
            {
                listen.Protocols = HttpProtocols.Http2;
                listen.UseConnectionGuard();
            });
        });
        return builder;
    }

    /// <summary>The complete application: <see cref="CreateBuilder"/>, services, optional test overrides, endpoints.</summary>
    public static WebApplication Build(string[] args, Action<WebApplicationBuilder>? configure = null, string? contentRoot = null)
    {
        var builder = CreateBuilder(args, contentRoot);
        builder.Services.AddOrchestrator(builder.Configuration);
        configure?.Invoke(builder);
        var app = builder.Build();
        app.MapOrchestrator();
        return app;
    }

    /// <summary>Program.cs: <c>--help</c>, or run until shutdown; a bad setting or failed start is one line on stderr (see <see cref="ServerHost"/>).</summary>
    public static Task<int> RunAsync(string[] args) => ServerHost.RunAsync(CommandLine, args, a => Build(a));
}
