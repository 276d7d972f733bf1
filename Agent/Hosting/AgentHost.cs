using Rbs.Agent.Execution.Reattach;
using Rbs.Agent.Sync;
using Rbs.Agent.Tunnel;
using Rbs.Shared.Hosting;

namespace Rbs.Agent.Hosting;

/// <summary>Builds the agent's WebApplication from command-line arguments (Program.cs and in-process tests).</summary>
internal static class AgentHost
{
    private const string Section = AgentOptions.SectionName;

    /// <summary>
    /// rbs-agent's command line: the flags of the cross-component contract (section <c>Agent</c>), plus tunnel mode's
    /// (<see cref="AgentTunnelOptions.SwitchMappings"/>) and workspace sync's (<see cref="WorkspaceSyncOptions.SwitchMappings"/>),
    /// whose keys those option classes own. A flag they map but this list does not describe is still accepted.
    /// </summary>
    public static readonly ServerCommandLine CommandLine = new(
        "rbs-agent",
        "runs the configured build tool (bazel) for jbazel's ExecuteCommand streams, in one workspace.",
        Described(
            [
                new("--agent-id", $"{Section}:{nameof(AgentOptions.AgentId)}", "ID", "required", "The agent's id, reported in every started frame and in GetStatus."),
                new("--workspace", $"{Section}:{nameof(AgentOptions.Workspace)}", "DIR", "required", "Absolute path of the workspace the tool runs in; must exist."),
                new("--build-tool", $"{Section}:{nameof(AgentOptions.BuildTool)}", "TOOL", "bazel", "The only program the agent runs: a name on PATH or an absolute path."),
                new("--listen", $"{Section}:{nameof(AgentOptions.Listen)}", "HOST:PORT", "127.0.0.1:0 (none in tunnel mode)", "The h2c endpoint (an IP address or localhost; port 0 = ephemeral); pods use 0.0.0.0:9011."),
                new("--ready-file", $"{Section}:{nameof(AgentOptions.ReadyFile)}", "FILE", "none", "Written once listening: {\"agentId\",\"pid\",\"address\"}."),
                new("--access-key-file", $"{Section}:{nameof(AgentOptions.AccessKeyFile)}", "FILE", "none (no key)", "A key every call on the agent's own listener must carry (read once, then deleted); set by the orchestrator for agents under their user's uid."),
                new("--idle-exit-after", $"{Section}:{nameof(AgentOptions.IdleExitAfter)}", "DURATION", "00:00:00 (never)", "The agent stops itself after this long without a command."),
                new("--interrupt-grace-period", $"{Section}:{nameof(AgentOptions.InterruptGracePeriod)}", "DURATION", "00:00:10", "How long an interrupted tool gets after SIGINT before SIGTERM."),
                new("--build-tool-shutdown-timeout", $"{Section}:{nameof(AgentOptions.BuildToolShutdownTimeout)}", "DURATION", "00:00:10", "When the agent stops, how long it spends on 'bazel shutdown' of its servers (0 keeps them running)."),
                Mapped(AgentTunnelOptions.SwitchMappings, "--gateway", "URL", "none (tunnel mode off)", "Tunnel mode: dial out to this gateway agent endpoint, e.g. http://rbs-gateway:8081."),
                Mapped(AgentTunnelOptions.SwitchMappings, "--join-token-file", "FILE", "none", "File holding the join token for tunnel mode (preferred over --join-token)."),
                Mapped(AgentTunnelOptions.SwitchMappings, "--join-token", "TOKEN", "none", "The join token itself (visible to other users in the process list)."),
                Mapped(WorkspaceSyncOptions.SwitchMappings, "--sync-state-dir", "DIR", "<parent>/.<workspace-name>.rbs-sync", "The sync's index, journal and staged uploads; outside the workspace."),
                Mapped(WorkspaceSyncOptions.SwitchMappings, "--sync-max-file-bytes", "BYTES", "4294967296", "The largest file a synced tree may hold."),
                Mapped(WorkspaceSyncOptions.SwitchMappings, "--sync-max-total-bytes", "BYTES", "34359738368", "The largest sum of file sizes of a synced tree."),
                Mapped(WorkspaceSyncOptions.SwitchMappings, "--sync-max-entries", "COUNT", "1000000", "The most entries a synced tree may hold."),
                Mapped(WorkspaceSyncOptions.SwitchMappings, "--sync-case", "auto|sensitive|insensitive", "auto", "Whether names differing only in case collide."),
                Mapped(ReattachOptions.SwitchMappings, "--reattach-grace", "DURATION", "00:01:00", "How long a command whose client is gone keeps running, waiting for it to reattach (0: stop it at once)."),
                Mapped(ReattachOptions.SwitchMappings, "--reattach-memory-bytes", "BYTES", "8388608", "Output of one command kept in memory until its client has it; beyond, it spills to a file."),
                Mapped(ReattachOptions.SwitchMappings, "--reattach-spill-bytes", "BYTES", "268435456", "The most output of one command in its spill file; beyond, a command whose client is away is stopped."),
                Mapped(ReattachOptions.SwitchMappings, "--reattach-spill-dir", "DIR", "<temp>/rbs-agent-output-<pid>", "Where spill files go (deleted when their command is forgotten)."),
                .. Rbs.Shared.Telemetry.RbsTelemetryOptions.Flags(Section),
            ],
            AgentTunnelOptions.SwitchMappings,
            ReattachOptions.SwitchMappings,
            WorkspaceSyncOptions.SwitchMappings),
        "--listen",
        ServerLimitsOptions.Describe(Section));

    /// <summary>A builder with the agent's configuration sources: appsettings, <c>Agent__*</c> env vars, then flags.</summary>
    /// <exception cref="CommandLineException">The arguments are not a valid command line.</exception>
    public static WebApplicationBuilder CreateBuilder(string[] args) =>
        ServerHost.CreateBuilder(CommandLine, args, AppContext.BaseDirectory);

    /// <summary>
    /// The whole agent; Program.cs runs exactly this. <paramref name="configure"/> runs before AddAgent, so tests can
    /// add logging or replace services such as TimeProvider. With <c>--gateway</c> the agent dials out to the gateway
    /// and listens on a socket only when <c>--listen</c> was given explicitly.
    /// </summary>
    public static WebApplication Build(string[] args, Action<WebApplicationBuilder>? configure = null)
    {
        var builder = CreateBuilder(args);
        configure?.Invoke(builder);
        builder.Services.AddAgent(builder.Configuration);
        if (builder.Configuration.IsAgentTunnelEnabled())
        {
            builder.WebHost.UseAgentTunnel();
        }

        var app = builder.Build();
        app.MapAgent();
        return app;
    }

    /// <summary>Program.cs: <c>--help</c>, or run until shutdown; a bad setting or failed start is one line on stderr (see <see cref="ServerHost"/>).</summary>
    public static Task<int> RunAsync(string[] args) => ServerHost.RunAsync(CommandLine, args, a => Build(a));

    private static ServerFlag Mapped(IReadOnlyDictionary<string, string> mappings, string name, string value, string defaultValue, string description) =>
        new(name, mappings[name], value, defaultValue, description);

    /// <summary>The described flags, then any other flag the option classes map (described by its key only).</summary>
    private static IEnumerable<ServerFlag> Described(IReadOnlyList<ServerFlag> described, params IReadOnlyDictionary<string, string>[] mappings)
    {
        foreach (var flag in described)
        {
            yield return flag;
        }

        foreach (var (name, key) in mappings.SelectMany(m => m).Where(m => described.All(d => d.Name != m.Key)).OrderBy(m => m.Key, StringComparer.Ordinal))
        {
            yield return new(name, key, "VALUE", "see Agent/README.md", $"Sets {key}.");
        }
    }
}
