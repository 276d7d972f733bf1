using Rbs.Orchestrator.State;
using Rbs.V1;

namespace Rbs.Orchestrator.Lifecycle;

/// <summary>Asks an agent how busy it is (rbs.v1.Agent/GetStatus), for idle reaping.</summary>
internal interface IAgentStatusClient
{
    /// <summary>The agent's status, or null when it cannot be asked right now (unreachable, wrong agent).</summary>
    Task<AgentStatus?> TryGetStatusAsync(AgentRecord agent, CancellationToken cancellationToken);
}
