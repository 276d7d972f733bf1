using Grpc.Core;
using Rbs.Gateway.Hosting;
using Rbs.V1;

namespace Rbs.Gateway.Registration;

/// <summary>What the orchestrator said about an agent.</summary>
internal enum AgentConfirmation
{
    /// <summary>Live and owned by the user asked about.</summary>
    Live,

    /// <summary>The orchestrator does not know it as a live agent of that user (unknown id, another user, stopping, dead).</summary>
    NotLive,

    /// <summary>The orchestrator could not be asked (down, unreachable, another key): nothing is known.</summary>
    Unknown,
}

/// <summary>The answer and, unless live, why (for logs and the refusal).</summary>
internal sealed record AgentConfirmationResult(AgentConfirmation Outcome, string Reason);

/// <summary>
/// The gateway's client of <c>rbs.v1.AgentDirectory</c> on the orchestrator (<see cref="GatewayOptions.OrchestratorAddress"/>),
/// the source of truth for "is this agent legitimately alive, and whose is it". Asked only on the rare paths: an
/// authentic but expired join token, and a stream for an agent that is not connected. Authenticates with a
/// short-lived internal token.
/// </summary>
internal sealed partial class AgentDirectoryClient(OrchestratorChannel orchestrator, ILogger<AgentDirectoryClient> logger)
{
    /// <summary>
    /// Bound of one question. The tunnel handshake waits for the answer, so it must fit well inside the agent's
    /// connect timeout (10 s by default).
    /// </summary>
    public static readonly TimeSpan CallTimeout = TimeSpan.FromSeconds(5);

    /// <summary>Asks whether <paramref name="agentId"/> is a live agent of <paramref name="userId"/>. Never throws for a failed call.</summary>
    public async Task<AgentConfirmationResult> ConfirmAsync(string agentId, string userId, CancellationToken cancellationToken)
    {
        var client = new AgentDirectory.AgentDirectoryClient(orchestrator.Channel);
        var headers = orchestrator.InternalHeaders();
        try
        {
            var response = await client.ConfirmAgentAsync(
                new ConfirmAgentRequest { AgentId = agentId, UserId = userId },
                headers,
                deadline: DateTime.UtcNow + CallTimeout,
                cancellationToken: cancellationToken);
            var result = response.Live
                ? new AgentConfirmationResult(AgentConfirmation.Live, string.Empty)
                : new AgentConfirmationResult(AgentConfirmation.NotLive, response.Reason);
            Log.Answered(logger, agentId, userId, result.Outcome, result.Reason);
            return result;
        }
        catch (RpcException e) when (e.StatusCode != StatusCode.Cancelled || !cancellationToken.IsCancellationRequested)
        {
            var reason = $"the orchestrator at {orchestrator.Address} did not answer ({e.StatusCode}: {e.Status.Detail})";
            Log.Unanswered(logger, agentId, reason);
            return new AgentConfirmationResult(AgentConfirmation.Unknown, reason);
        }
    }

    /// <summary>
    /// This replica's heartbeat (<see cref="Replicas.ReplicaHeartbeatService"/>) or, <paramref name="draining"/>, its
    /// farewell: the live replica set, or null when the orchestrator could not be asked (logged). Never throws for a failed call.
    /// </summary>
    public async Task<IReadOnlyList<Rbs.Shared.Protocol.GatewayReplicaEntry>?> HeartbeatReplicaAsync(
        string replicaId, string agentAddress, TimeSpan lease, bool draining, CancellationToken cancellationToken)
    {
        var client = new AgentDirectory.AgentDirectoryClient(orchestrator.Channel);
        var headers = orchestrator.InternalHeaders();
        try
        {
            var response = await client.HeartbeatReplicaAsync(
                new HeartbeatReplicaRequest
                {
                    ReplicaId = replicaId,
                    AgentAddress = agentAddress,
                    Lease = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(lease),
                    Draining = draining,
                },
                headers,
                deadline: DateTime.UtcNow + CallTimeout,
                cancellationToken: cancellationToken);
            return [.. response.Replicas.Select(r => new Rbs.Shared.Protocol.GatewayReplicaEntry(r.ReplicaId, r.AgentAddress))];
        }
        catch (RpcException e) when (e.StatusCode != StatusCode.Cancelled || !cancellationToken.IsCancellationRequested)
        {
            Log.HeartbeatFailed(logger, replicaId, orchestrator.Address, e.StatusCode, e.Status.Detail);
            return null;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return null;
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 140, Level = LogLevel.Information, Message = "Orchestrator on agent {AgentId} of user {UserId}: {Outcome} {Reason}")]
        public static partial void Answered(ILogger logger, string agentId, string userId, AgentConfirmation outcome, string reason);

        [LoggerMessage(EventId = 141, Level = LogLevel.Warning, Message = "Could not ask the orchestrator about agent {AgentId}: {Reason}")]
        public static partial void Unanswered(ILogger logger, string agentId, string reason);

        [LoggerMessage(EventId = 142, Level = LogLevel.Warning, Message = "Replica {ReplicaId}: heartbeat to the orchestrator at {Address} failed ({Status}: {Detail}); keeping the last replica set")]
        public static partial void HeartbeatFailed(ILogger logger, string replicaId, string address, StatusCode status, string detail);
    }
}
