using System.Data.Common;
using Grpc.Core;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Hosting;
using Rbs.V1;

namespace Rbs.Orchestrator.Allocation;

/// <summary><c>rbs.v1.Orchestrator</c>: hands out the warm agent for (caller, repository).</summary>
internal sealed partial class OrchestratorGrpcService(
    AgentAllocator allocator,
    IOptions<OrchestratorOptions> options,
    ILogger<OrchestratorGrpcService> logger) : V1.Orchestrator.OrchestratorBase
{
    public override async Task<GetServerResponse> GetServer(GetServerRequest request, ServerCallContext context)
    {
        var userId = ResolveUser();
        var sourcePath = GetServerRequestValidator.Validate(
            request,
            sourceMustExist: options.Value.GetBackend() == OrchestratorOptions.ProcessBackend);

        AllocationResult result;
        try
        {
            result = await allocator.GetOrAllocateAsync(userId, request.RepoHash, sourcePath, context.CancellationToken);
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
        return new GetServerResponse
        {
            AgentId = agent.AgentId,
            Address = agent.Address,
            Warm = result.Warm,
            ConnectMode = ConnectMode.Direct,
            Backend = agent.Backend,
            BackendRef = agent.BackendRef,
            WorkspacePath = agent.SourcePath,
            AllocationMillis = (long)result.Elapsed.TotalMilliseconds,
        };
    }

    private string ResolveUser()
    {
        if (options.Value.LocalMode)
        {
            return OrchestratorOptions.LocalUser;
        }

        // Seam for API-key authentication (the gateway/security work): until it exists, only local mode
        // has a caller identity, and handing out agents to anonymous callers would be worse than refusing.
        throw new RpcException(new Status(
            StatusCode.Unauthenticated,
            "this orchestrator has no client authentication configured; run it with --local-mode for a single local user"));
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 300, Level = LogLevel.Error, Message = "GetServer for repo {RepoHash} failed: state store error {Reason}")]
        public static partial void StoreFailed(ILogger logger, string repoHash, string reason);
    }
}
