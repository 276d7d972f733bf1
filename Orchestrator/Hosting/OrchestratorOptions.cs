using System.Net;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Gateway;
using Rbs.Orchestrator.Security;
using Rbs.V1;

namespace Rbs.Orchestrator.Hosting;

/// <summary>
/// Orchestrator settings: section <c>Orchestrator</c> (env <c>Orchestrator__Key</c>), friendly flags in
/// <see cref="OrchestratorHost"/>.
/// </summary>
internal sealed class OrchestratorOptions
{
    public const string SectionName = "Orchestrator";

    /// <summary>Backend name for local subprocess agents.</summary>
    public const string ProcessBackend = "process";

    /// <summary>Backend name for Kubernetes pod agents.</summary>
    public const string KubernetesBackend = "kubernetes";

    /// <summary>The single implicit user of local mode.</summary>
    public const string LocalUser = "local";

    /// <summary>
    /// Developer mode (<c>--local-mode</c>): agents are local processes, every caller is the implicit user
    /// "local", and the default listen address is 127.0.0.1. Default: false.
    /// </summary>
    public bool LocalMode { get; set; }

    /// <summary>
    /// Compute backend: "process" or "kubernetes" (<c>--backend</c>). Default: empty, which means "process"
    /// with <see cref="LocalMode"/> and is an error without it.
    /// </summary>
    public string? Backend { get; set; }

    /// <summary>gRPC port (<c>--port</c>). Default: 50051. 0 picks a free port, reported on stdout and in the ready file.</summary>
    public int Port { get; set; } = 50051;

    /// <summary>
    /// IP address to listen on (<c>--listen-address</c>). Default: empty, meaning 127.0.0.1 in local mode and
    /// all interfaces (0.0.0.0) otherwise.
    /// </summary>
    public string? ListenAddress { get; set; }

    /// <summary>
    /// SQLite state file (<c>--state-path</c>); a leading "~/" means the home directory. Agent ready files and
    /// logs go to <c>agents/</c> beside it. Default: <c>$XDG_STATE_HOME/rbs/orchestrator.db</c>, else
    /// <c>~/.local/state/rbs/orchestrator.db</c>.
    /// </summary>
    public string? StatePath { get; set; }

    /// <summary>
    /// Where process-backend agents that build a synced copy of a client's tree keep it (<c>--workspaces-path</c>):
    /// <c>&lt;path&gt;/&lt;user&gt;/&lt;repo hash&gt;/tree</c>, with the agent's sync state beside it. A replacement agent
    /// for the same (user, repository) reuses the tree, so its next sync is incremental. Default: <c>workspaces/</c>
    /// beside the state file.
    /// </summary>
    public string? WorkspacesPath { get; set; }

    /// <summary>
    /// File written once listening (<c>--ready-file</c>): <c>{"address":"http://127.0.0.1:PORT","pid":N}</c>,
    /// atomically (temp file + rename). Default: empty (none).
    /// </summary>
    public string? ReadyFile { get; set; }

    /// <summary>
    /// An agent unused for this long, with no running command, is stopped (<c>--idle-ttl</c>).
    /// Default: 03:00:00.
    /// </summary>
    public TimeSpan IdleTtl { get; set; } = TimeSpan.FromHours(3);

    /// <summary>How often the reaper looks for idle and dead agents (<c>--reap-interval</c>). Default: 00:00:30.</summary>
    public TimeSpan ReapInterval { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// How long an agent may take to become reachable (<c>--agent-start-timeout</c>); also bounds the
    /// allocation lease. Default: 00:00:30.
    /// </summary>
    public TimeSpan AgentStartTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Lease time beyond <see cref="AgentStartTimeout"/> on an allocation (<c>--allocation-lease-margin</c>): it covers
    /// the state-store writes around an agent's start, so another replica takes over an allocation only after its
    /// owner is surely gone. Default: 00:00:10.
    /// </summary>
    public TimeSpan AllocationLeaseMargin { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Connect mode for clients that do not ask for one (<c>--default-connect-mode</c>): "direct" or "tunnel".
    /// Default: empty, meaning tunnel when a gateway is configured (<c>Orchestrator:Gateway:PublicAddress</c>), else direct.
    /// </summary>
    public string? DefaultConnectMode { get; set; }

    /// <summary>
    /// Client API keys (env <c>Orchestrator__ApiKeys__0__User</c> / <c>Orchestrator__ApiKeys__0__Key</c>). When any key is
    /// configured (here or in <see cref="ApiKeysFile"/>), every GetServer must present one as
    /// <c>authorization: Bearer &lt;key&gt;</c>. Default: none (local mode: implicit user "local"; otherwise clients are refused).
    /// </summary>
    public List<ApiKeyEntry> ApiKeys { get; set; } = [];

    /// <summary>File of API keys, one <c>user:key</c> per line, <c>#</c> comments (<c>--api-keys-file</c>). Default: none.</summary>
    public string? ApiKeysFile { get; set; }

    /// <summary>
    /// At most this many agents at once, all users together (<c>--max-agents</c>); 0 = no limit. Counted from the state
    /// store, so replicas sharing it share the limit; a cold GetServer beyond it fails with ResourceExhausted (jbazel
    /// exit 50). Default: empty, meaning 16 with the process backend and no limit with Kubernetes (the cluster's quotas
    /// govern pods). 16 because an idle agent with its bazel server holds about 270 MB here (measured: rbs-agent ≈ 80 MB
    /// RSS, bazel 4.2.3 server ≈ 190 MB after a small build), so 16 are ≈ 4.3 GB before any build grows bazel's heap, a
    /// sixth of a 24 GiB machine, and more builds at once than 2 cores serve gain nothing.
    /// </summary>
    public int? MaxAgents { get; set; }

    /// <summary>The process backend's default for <see cref="MaxAgents"/>.</summary>
    public const int DefaultProcessMaxAgents = 16;

    /// <summary>
    /// At most this many agents at once per user (<c>--max-agents-per-user</c>); 0 = no limit. An agent is per
    /// (user, repository) and a checkout built both in place and as a synced copy counts twice. Default: 4, so one
    /// user's stale checkouts cannot take the whole <see cref="MaxAgents"/> from everyone else.
    /// </summary>
    public int MaxAgentsPerUser { get; set; } = 4;

    /// <summary>The connect mode for UNSPECIFIED requests, given the gateway configuration.</summary>
    public ConnectMode GetDefaultConnectMode(OrchestratorGatewayOptions gateway) =>
        DefaultConnectMode?.Trim().ToLowerInvariant() switch
        {
            "tunnel" => ConnectMode.Tunnel,
            "direct" => ConnectMode.Direct,
            _ => string.IsNullOrWhiteSpace(gateway.PublicAddress) ? ConnectMode.Direct : ConnectMode.Tunnel,
        };

    /// <summary>The total agent limit in effect (0 = none): <see cref="MaxAgents"/>, else the backend's default.</summary>
    public int GetMaxAgents() => MaxAgents ?? (GetBackend() == ProcessBackend ? DefaultProcessMaxAgents : 0);

    /// <summary>The backend in effect: <see cref="Backend"/>, or "process" in local mode.</summary>
    public string GetBackend() =>
        string.IsNullOrWhiteSpace(Backend) ? (LocalMode ? ProcessBackend : string.Empty) : Backend.Trim().ToLowerInvariant();

    /// <summary>The address Kestrel binds.</summary>
    public IPAddress GetListenAddress() =>
        string.IsNullOrWhiteSpace(ListenAddress)
            ? (LocalMode ? IPAddress.Loopback : IPAddress.Any)
            : IPAddress.Parse(ListenAddress.Trim());

    /// <summary>The absolute state file path after defaults and "~" expansion.</summary>
    public string GetStatePath()
    {
        if (!string.IsNullOrWhiteSpace(StatePath))
        {
            return Path.GetFullPath(ExpandHome(StatePath.Trim()));
        }

        var stateHome = Environment.GetEnvironmentVariable("XDG_STATE_HOME");
        if (string.IsNullOrEmpty(stateHome) || !Path.IsPathFullyQualified(stateHome))
        {
            stateHome = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".local", "state");
        }

        return Path.Combine(stateHome, "rbs", "orchestrator.db");
    }

    /// <summary>Directory for agent ready files, spec files and logs: <c>&lt;state dir&gt;/agents</c>.</summary>
    public string GetAgentsDirectory() => Path.Combine(Path.GetDirectoryName(GetStatePath())!, "agents");

    /// <summary>The absolute root of synced process-agent workspaces (<see cref="WorkspacesPath"/>).</summary>
    public string GetWorkspacesDirectory() =>
        string.IsNullOrWhiteSpace(WorkspacesPath)
            ? Path.Combine(Path.GetDirectoryName(GetStatePath())!, "workspaces")
            : Path.GetFullPath(ExpandHome(WorkspacesPath.Trim()));

    private static string ExpandHome(string path) =>
        path == "~" || path.StartsWith("~/", StringComparison.Ordinal)
            ? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), path.Length > 2 ? path[2..] : string.Empty)
            : path;
}

/// <summary>Startup validation with messages that say which flag or key to fix.</summary>
/// <param name="registrations">When given, also checks that the chosen backend is registered in this build.</param>
internal sealed class OrchestratorOptionsValidator(IServiceProviderIsKeyedService? registrations = null) : IValidateOptions<OrchestratorOptions>
{
    // Agents get twice the TTL as their own idle backstop; a year keeps that arithmetic far from overflow.
    private static readonly TimeSpan s_maxIdleTtl = TimeSpan.FromDays(365);

    public ValidateOptionsResult Validate(string? name, OrchestratorOptions options)
    {
        var failures = new List<string>();
        var backend = options.GetBackend();
        if (backend.Length == 0)
        {
            failures.Add(
                "no compute backend configured: pass --local-mode to run agents as local processes, " +
                "or set Orchestrator:Backend (env Orchestrator__Backend) to 'kubernetes'");
        }
        else if (backend is not (OrchestratorOptions.ProcessBackend or OrchestratorOptions.KubernetesBackend))
        {
            failures.Add($"Orchestrator:Backend '{options.Backend}' is unknown; use 'process' or 'kubernetes'");
        }
        else if (options.LocalMode && backend != OrchestratorOptions.ProcessBackend)
        {
            failures.Add($"--local-mode runs agents as local processes; it cannot be combined with Orchestrator:Backend '{options.Backend}'");
        }
        else if (registrations is not null && !registrations.IsKeyedService(typeof(Compute.IComputeService), backend))
        {
            failures.Add($"compute backend '{backend}' is not available in this build of rbs-orchestrator; use --local-mode for local processes");
        }

        if (options.Port is < 0 or > 65535)
        {
            failures.Add($"--port {options.Port} is out of range (0..65535; 0 picks a free port)");
        }

        if (!string.IsNullOrWhiteSpace(options.ListenAddress) && !IPAddress.TryParse(options.ListenAddress.Trim(), out _))
        {
            failures.Add($"--listen-address '{options.ListenAddress}' is not an IP address (e.g. 127.0.0.1 or 0.0.0.0)");
        }

        if (options.IdleTtl <= TimeSpan.Zero || options.IdleTtl > s_maxIdleTtl)
        {
            failures.Add($"--idle-ttl {options.IdleTtl} must be positive and at most {s_maxIdleTtl} (e.g. 03:00:00)");
        }

        if (options.ReapInterval <= TimeSpan.Zero)
        {
            failures.Add($"--reap-interval {options.ReapInterval} must be positive (e.g. 00:00:30)");
        }

        if (!string.IsNullOrWhiteSpace(options.DefaultConnectMode)
            && options.DefaultConnectMode.Trim().ToLowerInvariant() is not ("direct" or "tunnel"))
        {
            failures.Add($"--default-connect-mode '{options.DefaultConnectMode}' is unknown; use 'direct' or 'tunnel'");
        }

        try
        {
            ApiKeyAuthenticator.Load(options);
        }
        catch (Exception e) when (e is FormatException or IOException or UnauthorizedAccessException)
        {
            failures.Add($"API keys: {e.Message}");
        }

        if (options.MaxAgents < 0)
        {
            failures.Add($"--max-agents {options.MaxAgents} must not be negative (0 = no limit)");
        }

        if (options.MaxAgentsPerUser < 0)
        {
            failures.Add($"--max-agents-per-user {options.MaxAgentsPerUser} must not be negative (0 = no limit)");
        }

        if (options.AgentStartTimeout <= TimeSpan.Zero)
        {
            failures.Add($"--agent-start-timeout {options.AgentStartTimeout} must be positive (e.g. 00:00:30)");
        }

        if (options.AllocationLeaseMargin < TimeSpan.Zero)
        {
            failures.Add($"--allocation-lease-margin {options.AllocationLeaseMargin} must not be negative (e.g. 00:00:10)");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
