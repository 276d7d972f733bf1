namespace Rbs.Agent.Hosting;

/// <summary>
/// The agent's configuration (section <c>Agent</c>; flags <c>--agent-id</c>, <c>--workspace</c>, <c>--build-tool</c>,
/// <c>--listen</c>, <c>--ready-file</c>, <c>--idle-exit-after</c>, <c>--interrupt-grace-period</c>,
/// <c>--build-tool-shutdown-timeout</c>; env <c>Agent__Key</c>).
/// </summary>
internal sealed class AgentOptions
{
    public const string SectionName = "Agent";

    /// <summary>The agent's id, reported in every started frame and in GetStatus. Required; no default.</summary>
    public string AgentId { get; set; } = "";

    /// <summary>
    /// The user this agent builds for, as the orchestrator knows them (env <c>Agent__UserId</c>, set by the orchestrator);
    /// named in each command's audit line. Default none (an agent started by hand).
    /// </summary>
    public string? UserId { get; set; }

    /// <summary>Absolute path of the workspace the tool runs in; must exist. Required; no default.</summary>
    public string Workspace { get; set; } = "";

    /// <summary>The only program the agent runs: a bare name looked up on PATH, or an absolute path. Default <c>bazel</c>.</summary>
    public string BuildTool { get; set; } = "bazel";

    /// <summary>
    /// The h2c endpoint, <c>host:port</c> (an IP address or <c>localhost</c>; port 0 = ephemeral).
    /// Default <c>127.0.0.1:0</c>; pods use <c>0.0.0.0:9011</c>. In tunnel mode (<c>--gateway</c>) the agent listens
    /// only when this is set explicitly.
    /// </summary>
    public string Listen { get; set; } = "127.0.0.1:0";

    /// <summary>
    /// When set, the agent writes <c>{"agentId","pid","address"}</c> here (via <c>.tmp</c> + rename) once it listens.
    /// Default: none.
    /// </summary>
    public string? ReadyFile { get; set; }

    /// <summary>
    /// A file holding the key every call on the agent's own listener must present as <c>authorization: Bearer &lt;key&gt;</c>
    /// (<c>--access-key-file</c>); read once at start-up and deleted. Calls over a gateway tunnel need none. The
    /// orchestrator's process backend sets it for agents it runs under their user's uid. Default: none (no key).
    /// </summary>
    public string? AccessKeyFile { get; set; }

    /// <summary>The agent stops itself after this long without a command; zero disables it. Default <c>00:00:00</c> (never).</summary>
    public TimeSpan IdleExitAfter { get; set; } = TimeSpan.Zero;

    /// <summary>How long an interrupted tool gets after SIGINT before it receives SIGTERM. Default <c>00:00:10</c>.</summary>
    public TimeSpan InterruptGracePeriod { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>How long after SIGTERM the tool's whole process tree is SIGKILLed. Default <c>00:00:05</c>.</summary>
    public TimeSpan TerminateGracePeriod { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// When the agent stops, how long it spends shutting down the build tool's servers (<c>bazel shutdown</c>) before it
    /// exits; a shutdown still running then finishes on its own. Zero keeps the servers running. Default <c>00:00:10</c>.
    /// </summary>
    public TimeSpan BuildToolShutdownTimeout { get; set; } = TimeSpan.FromSeconds(10);
}
