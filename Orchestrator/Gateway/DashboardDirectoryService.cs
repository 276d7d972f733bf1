using System.Data.Common;
using Grpc.Core;
using Rbs.Orchestrator.Security;
using Rbs.Orchestrator.State;
using Rbs.V1;

namespace Rbs.Orchestrator.Gateway;

/// <summary>
/// <c>rbs.v1.DashboardDirectory</c>, for the gateway's dashboard (docs/dashboard.md): a user signs in with the API key
/// jbazel uses, checked here by the same <see cref="ApiKeyAuthenticator"/> GetServer uses (the gateway never holds the
/// keys), and sees the agents this orchestrator's state store records for that user. Only the gateway may ask (internal token).
/// </summary>
internal sealed partial class DashboardDirectoryService(
    IStateStore store,
    ApiKeyAuthenticator apiKeys,
    GatewayClient gateway,
    ILogger<DashboardDirectoryService> logger) : DashboardDirectory.DashboardDirectoryBase
{
    public override async Task<DashboardSignInResponse> SignIn(DashboardSignInRequest request, ServerCallContext context)
    {
        await gateway.AuthenticateGatewayAsync(context.RequestHeaders);
        var headers = new Metadata();
        if (!string.IsNullOrEmpty(request.ApiKey))
        {
            headers.Add("authorization", "Bearer " + request.ApiKey);
        }

        try
        {
            var user = apiKeys.Authenticate(headers);
            Log.SignedIn(logger, user);
            return new DashboardSignInResponse { Accepted = true, UserId = user };
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unauthenticated)
        {
            Log.Refused(logger, e.Status.Detail);
            return new DashboardSignInResponse { Accepted = false, Reason = e.Status.Detail };
        }
    }

    public override async Task<ListUserAgentsResponse> ListUserAgents(ListUserAgentsRequest request, ServerCallContext context)
    {
        await gateway.AuthenticateGatewayAsync(context.RequestHeaders);
        if (string.IsNullOrEmpty(request.UserId))
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, "user_id is required"));
        }

        IReadOnlyList<AgentRecord> rows;
        try
        {
            rows = await store.ListAsync(context.CancellationToken);
        }
        catch (DbException e)
        {
            throw new RpcException(new Status(StatusCode.Unavailable, $"the orchestrator's state store is unavailable: {e.Message}"));
        }

        var response = new ListUserAgentsResponse();
        foreach (var row in rows.Where(r => string.Equals(r.UserId, request.UserId, StringComparison.Ordinal)).OrderBy(r => r.CreatedAt))
        {
            response.Agents.Add(new DashboardAgent
            {
                AgentId = row.AgentId,
                RepoHash = row.RepoHash,
                SourcePath = row.SourcePath,
                Backend = row.Backend,
                BackendRef = row.BackendRef,
                State = row.State.ToString().ToLowerInvariant(),
                CreatedUnixMillis = row.CreatedAt.ToUnixTimeMilliseconds(),
                LastUsedUnixMillis = row.LastUsedAt.ToUnixTimeMilliseconds(),
            });
        }

        return response;
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 620, Level = LogLevel.Information, Message = "Dashboard sign-in of user {UserId}")]
        public static partial void SignedIn(ILogger logger, string userId);

        [LoggerMessage(EventId = 621, Level = LogLevel.Information, Message = "Dashboard sign-in refused: {Reason}")]
        public static partial void Refused(ILogger logger, string reason);
    }
}
