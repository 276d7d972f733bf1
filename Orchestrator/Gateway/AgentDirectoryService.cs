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
    }
}
