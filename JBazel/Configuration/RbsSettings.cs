namespace Rbs.JBazel.Configuration;

/// <summary>How jbazel asks to reach its agent (<c>--rbs_connect</c>).</summary>
internal enum ConnectPreference
{
    /// <summary>Let the orchestrator choose (its configured default).</summary>
    Auto,

    /// <summary>Dial the agent's own address (in-cluster clients, local process mode).</summary>
    Direct,

    /// <summary>Dial the gateway, which forwards the stream over the agent's outbound tunnel.</summary>
    Tunnel,
}

/// <summary>When jbazel prints its allocation status line (<c>--rbs_status</c>).</summary>
internal enum StatusMode
{
    /// <summary>Only when standard error is a terminal.</summary>
    Auto,

    /// <summary>Always, even into a pipe or file (scripts grep it).</summary>
    Always,

    /// <summary>Never.</summary>
    Never,
}

/// <summary>jbazel's effective settings after merging command line, environment and rc files.</summary>
/// <param name="Orchestrator">Orchestrator (or gateway) base address. Default <c>http://127.0.0.1:50051</c>.</param>
/// <param name="Connect">Requested connect mode. Default <see cref="ConnectPreference.Auto"/>.</param>
/// <param name="Status">Status line policy. Default <see cref="StatusMode.Auto"/>.</param>
/// <param name="ApiKey">Sent as <c>authorization: Bearer</c> to the orchestrator when set. Default none.</param>
/// <param name="Timeout">Deadline for GetServer, which includes a cold agent's start. Default 120 s.</param>
internal sealed record RbsSettings(
    Uri Orchestrator,
    ConnectPreference Connect,
    StatusMode Status,
    string? ApiKey,
    TimeSpan Timeout)
{
    /// <summary>Fetch a successful <c>build</c>'s top-level outputs into jbazel-out/ (<c>--rbs_fetch_outputs</c>). Default false.</summary>
    public bool FetchOutputs { get; init; }

    /// <summary>Sync even where the agent could share this filesystem (<c>--rbs_sync</c>). Default false.</summary>
    public bool Sync { get; init; }

    /// <summary>Gitignore-syntax patterns left out of the sync (<c>--rbs_sync_exclude</c>), from every source. Default none.</summary>
    public IReadOnlyList<string> SyncExcludes { get; init; } = [];

    /// <summary>Leave git-ignored paths out of the sync (<c>--rbs_sync_gitignore</c>). Default false: bazel reads them.</summary>
    public bool SyncGitignore { get; init; }

    /// <summary>After a synced <c>test</c>/<c>coverage</c>, fetch the logs of the tests that did not pass (<c>--rbs_fetch_test_logs</c>). Default true.</summary>
    public bool FetchTestLogs { get; init; } = true;

    /// <summary>
    /// In tunnel mode, have the gateway relay the agent connection (<c>--rbs_relay</c>, env <c>RBS_RELAY</c>) instead of
    /// forwarding each call: the gateway then copies bytes instead of terminating HTTP/2 twice. Default true; false is
    /// the way back to per-call forwarding when a relay misbehaves (a gateway without the relay is detected anyway).
    /// </summary>
    public bool Relay { get; init; } = true;

    /// <summary>
    /// Where <see cref="Orchestrator"/> came from, for error messages: <c>--rbs_orchestrator on the command line</c>,
    /// <c>environment variable RBS_ORCHESTRATOR</c>, <c>/ws/.jbazelrc:3</c>, or the default.
    /// </summary>
    public string OrchestratorSource { get; init; } = DefaultSource;

    public const string DefaultSource = "the built-in default (no --rbs_orchestrator, RBS_ORCHESTRATOR or .jbazelrc sets it)";

    public static readonly Uri DefaultOrchestrator = new("http://127.0.0.1:50051");

    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(120);

    public static RbsSettings Defaults { get; } =
        new(DefaultOrchestrator, ConnectPreference.Auto, StatusMode.Auto, null, DefaultTimeout);
}
