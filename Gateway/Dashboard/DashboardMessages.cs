namespace Rbs.Gateway.Dashboard;

/// <summary>
/// One message of the hub's <c>Watch</c> stream to a page (JSON, camelCase, null fields omitted). <see cref="Type"/>:
/// <c>agents</c> (the whole list), <c>reset</c> (an agent's commands follow afresh), <c>command</c> (started or ended),
/// <c>output</c> (text), <c>gap</c> (bytes the page does not get: the tail began later, or it fell behind), <c>error</c>.
/// </summary>
internal sealed record DashboardMessage(string Type)
{
    public string? User { get; init; }

    public string? AgentId { get; init; }

    public IReadOnlyList<AgentView>? Agents { get; init; }

    public CommandView? Command { get; init; }

    public string? InvocationId { get; init; }

    public string? Text { get; init; }

    public bool? Stdout { get; init; }

    public long? Bytes { get; init; }

    public string? Message { get; init; }
}

/// <summary>An agent of the signed-in user: the orchestrator's record and, when it has tunnels here, this gateway's view.</summary>
internal sealed record AgentView(
    string AgentId,
    string RepoHash,
    string SourcePath,
    string Backend,
    string BackendRef,
    string State,
    long LastUsedUnixMillis,
    bool Tunnel,
    int LiveTunnels,
    int IdleTunnels,
    bool? Warm,
    int? RunningCommands,
    long? LastActivityUnixMillis);

/// <summary>A command, as the agent reported it.</summary>
internal sealed record CommandView(
    string InvocationId,
    IReadOnlyList<string> Args,
    long StartedUnixMillis,
    bool Running,
    int ExitCode,
    int Signal,
    long DurationMillis,
    bool Terminal);
