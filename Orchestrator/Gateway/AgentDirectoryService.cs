using System.Data.Common;
using Grpc.Core;
using Rbs.Orchestrator.Compute;
using Rbs.Shared.Tokens;
using Rbs.Orchestrator.State;
using Rbs.V1;

namespace Rbs.Orchestrator.Gateway;

/// <summary>
/// <c>rbs.v1.AgentDirectory</c>, for the gateway: whether an agent id is legitimately alive and whose it is. The
/// orchestrator is the source of truth for that (its state store, and the compute backend's view of the agent), so
/// the gateway asks here before it re-admits an agent whose join token expired, or holds a stream for an agent that
/// is not connected. Only the gateway may ask (internal token).
/// </summary>
internal sealed partial class AgentDirectoryService(
    IStateStore store,
    IComputeService compute,
    GatewayClient gateway,
    TimeProvider timeProvider,
    ILogger<AgentDirectoryService> logger) : AgentDirectory.AgentDirectoryBase
{
    public override async Task<ConfirmAgentResponse> ConfirmAgent(ConfirmAgentRequest request, ServerCallContext context)
    {
        await gateway.AuthenticateGatewayAsync(context.RequestHeaders);
        if (string.IsNullOrEmpty(request.AgentId) || string.IsNullOrEmpty(request.UserId))
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, "agent_id and user_id are required"));
        }

        string? refusal;
        try
        {
            refusal = await RefusalAsync(request, context.CancellationToken);
        }
        catch (DbException e)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, $"the orchestrator's state store is unavailable: {e.Message}"));
        }

        if (refusal is null)
        {
            Log.Confirmed(logger, request.AgentId, request.UserId);
            return new ConfirmAgentResponse { Live = true };
        }

        Log.Refused(logger, request.AgentId, request.UserId, refusal);
        return new ConfirmAgentResponse { Live = false, Reason = refusal };
    }

    /// <summary>Name prefix of the gateway replicas' leases in the state store (owner: the replica's agent address).</summary>
    public const string ReplicaLeasePrefix = "gateway-replica/";

    private static readonly TimeSpan s_minReplicaLease = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan s_maxReplicaLease = TimeSpan.FromSeconds(60);

    /// <summary>
    /// A gateway replica renews its lease (or, draining, ends it) and learns the live replica set. The set lives in
    /// the state store, so every orchestrator replica answers alike and nothing is lost when one restarts.
    /// </summary>
    public override async Task<HeartbeatReplicaResponse> HeartbeatReplica(HeartbeatReplicaRequest request, ServerCallContext context)
    {
        await gateway.AuthenticateGatewayAsync(context.RequestHeaders);
        if (string.IsNullOrEmpty(request.ReplicaId) || string.IsNullOrEmpty(request.AgentAddress))
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, "replica_id and agent_address are required"));
        }

        var name = ReplicaLeasePrefix + request.ReplicaId;
        try
        {
            if (request.Draining)
            {
                if (await store.ReleaseLeaseAsync(name, request.AgentAddress, context.CancellationToken))
                {
                    Log.ReplicaDraining(logger, request.ReplicaId, request.AgentAddress);
                }
            }
            else
            {
                var asked = request.Lease?.ToTimeSpan() ?? TimeSpan.Zero;
                var lease = asked < s_minReplicaLease ? s_minReplicaLease : asked > s_maxReplicaLease ? s_maxReplicaLease : asked;
                if (!await store.TryAcquireLeaseAsync(name, request.AgentAddress, lease, context.CancellationToken))
                {
                    throw new RpcException(new Status(StatusCode.AlreadyExists,
                        $"gateway replica id {request.ReplicaId} is held by another live replica at another agent address; give each replica its own --replica-id"));
                }
            }

            var leases = await store.ListLeasesAsync(ReplicaLeasePrefix, context.CancellationToken);
            return new HeartbeatReplicaResponse
            {
                Replicas =
                {
                    leases.Select(l => new GatewayReplica { ReplicaId = l.Name[ReplicaLeasePrefix.Length..], AgentAddress = l.Owner }),
                },
            };
        }
        catch (DbException e)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, $"the orchestrator's state store is unavailable: {e.Message}"));
        }
    }

    /// <summary>Null when the agent is live and owned by the user; else why not.</summary>
    private async Task<string?> RefusalAsync(ConfirmAgentRequest request, CancellationToken cancellationToken)
    {
        var row = await store.GetAsync(request.AgentId, cancellationToken);
        if (row is null)
        {
            return "no such agent (stopped, reaped, or never started by this orchestrator)";
        }

        if (!RbsTokenService.FixedTimeEquals(row.UserId, request.UserId))
        {
            return "the agent belongs to another user";
        }

        switch (row.State)
        {
            case AgentState.Allocating:
                return row.LeaseExpiresAt is { } lease && lease > timeProvider.GetUtcNow()
                    ? null
                    : "its allocation was abandoned";
            case AgentState.Ready:
                // Unknown (the backend cannot tell right now) is not held against it, as on GetServer's warm path.
                return await compute.ProbeAsync(row, cancellationToken) == AgentHealth.Dead
                    ? $"its {row.Backend} agent ({row.BackendRef}) is gone"
                    : null;
            default:
                return "it is being stopped";
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 610, Level = LogLevel.Debug, Message = "Gateway asked about agent {AgentId} of user {UserId}: live")]
        public static partial void Confirmed(ILogger logger, string agentId, string userId);

        [LoggerMessage(EventId = 611, Level = LogLevel.Information, Message = "Gateway asked about agent {AgentId} of user {UserId}: not live, {Reason}")]
        public static partial void Refused(ILogger logger, string agentId, string userId, string reason);

        [LoggerMessage(EventId = 612, Level = LogLevel.Information, Message = "Gateway replica {ReplicaId} ({AgentAddress}) is draining: it left the replica set")]
        public static partial void ReplicaDraining(ILogger logger, string replicaId, string agentAddress);
    }
}
