using System.Data.Common;
using Grpc.Core;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Orchestrator.Gateway;
using Rbs.Orchestrator.Hosting;
using Rbs.Orchestrator.Security;
using Rbs.V1;

namespace Rbs.Orchestrator.Allocation;

/// <summary>
/// <c>rbs.v1.Orchestrator</c>: hands out the warm agent for (caller, repository), reachable in the requested connect
/// mode: direct (the agent's own address) or tunnel (the gateway's public address, the agent's route and a session
/// token; only once the agent is registered at the gateway).
/// </summary>
internal sealed partial class OrchestratorGrpcService(
    AgentAllocator allocator,
    ApiKeyAuthenticator authenticator,
    GatewayClient gateway,
    IComputeService compute,
    UserIsolation isolation,
    IOptions<OrchestratorOptions> options,
    AllocationMetrics metrics,
    TimeProvider timeProvider,
    ILogger<OrchestratorGrpcService> logger) : V1.Orchestrator.OrchestratorBase
{
    public override async Task<GetServerResponse> GetServer(GetServerRequest request, ServerCallContext context)
    {
        var started = timeProvider.GetTimestamp();
        var userId = authenticator.Authenticate(context.RequestHeaders);
        // The request's shape first, so a malformed one is InvalidArgument whatever the gateway configuration.
        var sourcePath = GetServerRequestValidator.Validate(request, sourceMustExist: false);
        var mode = gateway.Resolve(request.ConnectMode);
        var placement = WorkspacePlacement.For(request, userId, mode, sourcePath, options.Value, isolation.Active);
        if (!placement.SyncRequired)
        {
            // The agent builds the client's own directory, so it must exist here.
            GetServerRequestValidator.EnsureSourceDirectoryExists(request.SourcePath, sourcePath);
        }

        AllocationResult result;
        try
        {
            result = await allocator.GetOrAllocateAsync(userId, placement.AgentKey, placement.Workspace, context.CancellationToken);
            if (mode == ConnectMode.Tunnel)
            {
                result = await EnsureRegisteredAsync(result, userId, placement.AgentKey, placement.Workspace, context.CancellationToken);
            }
        }
        catch (DbException e)
        {
            // Store faults are transient from the client's point of view: jbazel maps Unavailable to exit 38.
            Log.StoreFailed(logger, request.RepoHash, e.Message);
            throw new RpcException(new Status(StatusCode.Unavailable, $"the orchestrator's state store is unavailable: {e.Message}"));
        }
        catch (OperationCanceledException) when (context.CancellationToken.IsCancellationRequested)
        {
            throw new RpcException(new Status(StatusCode.Cancelled, "GetServer cancelled by the client"));
        }

        var agent = result.Agent;
        var response = new GetServerResponse
        {
            AgentId = agent.AgentId,
            Address = agent.Address,
            Warm = result.Warm,
            ConnectMode = ConnectMode.Direct,
            Backend = agent.Backend,
            BackendRef = agent.BackendRef,
            WorkspacePath = agent.SourcePath,
            AllocationMillis = (long)result.Elapsed.TotalMilliseconds,
            SyncRequired = placement.SyncRequired,
        };
        if (mode == ConnectMode.Tunnel)
        {
            // The client talks only to the gateway; the route and the (user, agent) session token get it to this agent.
            response.ConnectMode = ConnectMode.Tunnel;
            response.Address = gateway.PublicAddress;
            response.Route = agent.AgentId;
            response.SessionToken = gateway.MintSession(agent.AgentId, userId);
            response.Relay = gateway.Relay;
        }
        else if (await compute.GetDirectAccessKeyAsync(agent, context.CancellationToken) is { } accessKey)
        {
            // The agent's loopback port is reachable by every process on this machine: only this key opens it.
            response.SessionToken = accessKey;
        }

        metrics.GetServerCompleted(timeProvider.GetElapsedTime(started), result.Warm);
        return response;
    }

    /// <summary>
    /// Returns once the agent has a live tunnel. A fresh agent that does not register is stopped (never leaked) and the
    /// client gets Unavailable; a warm agent that does not (re-)register within RegistrationTimeout (e.g. started before the
    /// gateway was configured) is replaced once. A gateway that cannot be asked leaves a warm agent alone.
    /// </summary>
    private async Task<AllocationResult> EnsureRegisteredAsync(
        AllocationResult result, string userId, string repoHash, string sourcePath, CancellationToken cancellationToken)
    {
        for (var attempt = 0; ; attempt++)
        {
            var check = await gateway.CheckRegisteredAsync(result.Agent, cancellationToken);
            if (check.Registered)
            {
                return result;
            }

            if (result.Warm && check.GatewayUnreachable)
            {
                throw new RpcException(new Status(StatusCode.Unavailable, check.Message ?? "the gateway is unavailable"));
            }

            Log.Unregistered(logger, result.Agent.AgentId, result.Warm, check.Message ?? string.Empty);
            await allocator.CleanUpAsync(result.Agent, CancellationToken.None);
            if (!result.Warm || attempt > 0)
            {
                throw new RpcException(new Status(StatusCode.Unavailable, check.Message ?? "the agent did not register at the gateway"));
            }

            result = await allocator.GetOrAllocateAsync(userId, repoHash, sourcePath, cancellationToken);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 300, Level = LogLevel.Error, Message = "GetServer for repo {RepoHash} failed: state store error {Reason}")]
        public static partial void StoreFailed(ILogger logger, string repoHash, string reason);

        [LoggerMessage(EventId = 301, Level = LogLevel.Warning, Message = "Agent {AgentId} (warm: {Warm}) is not registered at the gateway; stopping it: {Reason}")]
        public static partial void Unregistered(ILogger logger, string agentId, bool warm, string reason);
    }
}
