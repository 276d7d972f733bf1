using System.Collections.Concurrent;
using Rbs.Orchestrator.Lifecycle;
using Rbs.Orchestrator.State;
using Rbs.V1;

namespace Rbs.Tests.Orchestrator.Infrastructure;

/// <summary>
/// Stands in for the agent's GetStatus while the lifecycle tests use the gRPC-less fake agent: each test
/// says how busy each agent is. Agents not scripted yet answer <see cref="DefaultRunningCommands"/>
/// commands running (default 0) and no activity ever.
/// </summary>
internal sealed class ScriptedStatusClient : IAgentStatusClient
{
    private readonly ConcurrentDictionary<string, AgentStatus> _statuses = new(StringComparer.Ordinal);

    /// <summary>Running commands reported for agents without a <see cref="Set"/> (e.g. just allocated).</summary>
    public int DefaultRunningCommands { get; init; }

    public void Set(string agentId, int runningCommands, DateTimeOffset lastActivity) =>
        _statuses[agentId] = new AgentStatus
        {
            AgentId = agentId,
            RunningCommands = runningCommands,
            LastActivityUnixMillis = lastActivity.ToUnixTimeMilliseconds(),
        };

    public Task<AgentStatus?> TryGetStatusAsync(AgentRecord agent, CancellationToken cancellationToken)
    {
        return Task.FromResult<AgentStatus?>(
            _statuses.TryGetValue(agent.AgentId, out var status)
                ? status
                : new AgentStatus { AgentId = agent.AgentId, RunningCommands = DefaultRunningCommands, LastActivityUnixMillis = 0 });
    }
}
