using Grpc.Core;
using Grpc.Net.Client;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.State;
using Rbs.V1;

namespace Rbs.Orchestrator.Lifecycle;

/// <summary>
/// Calls the agent's GetStatus over h2c. A channel per call is fine: the reaper asks only about agents
/// already idle for a long time, so this is rare and off the GetServer path. An agent whose listener requires a direct
/// access key (process agents under user isolation) gets it like any client.
/// </summary>
internal sealed partial class GrpcAgentStatusClient(IComputeService compute, ILogger<GrpcAgentStatusClient> logger) : IAgentStatusClient
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromSeconds(5);

    public async Task<AgentStatus?> TryGetStatusAsync(AgentRecord agent, CancellationToken cancellationToken)
    {
        if (!Uri.TryCreate(agent.Address, UriKind.Absolute, out var address))
        {
            Log.StatusFailed(logger, agent.AgentId, agent.Address, "not an absolute address");
            return null;
        }

        using var channel = GrpcChannel.ForAddress(address);
        var client = new V1.Agent.AgentClient(channel);
        var headers = new Metadata();
        if (await compute.GetDirectAccessKeyAsync(agent, cancellationToken) is { } key)
        {
            headers.Add("authorization", "Bearer " + key);
        }

        try
        {
            var status = await client.GetStatusAsync(
                new GetStatusRequest(),
                headers,
                deadline: DateTime.UtcNow + s_deadline,
                cancellationToken: cancellationToken);
            if (status.AgentId != agent.AgentId)
            {
                // Another process now owns that port: our agent is not the one answering.
                Log.StatusFailed(logger, agent.AgentId, agent.Address, $"answered by agent '{status.AgentId}'");
                return null;
            }

            return status;
        }
        catch (RpcException e) when (!cancellationToken.IsCancellationRequested)
        {
            Log.StatusFailed(logger, agent.AgentId, agent.Address, e.Status.Detail);
            return null;
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 400, Level = LogLevel.Warning, Message = "GetStatus of agent {AgentId} at {Address} failed: {Reason}")]
        public static partial void StatusFailed(ILogger logger, string agentId, string address, string reason);
    }
}
