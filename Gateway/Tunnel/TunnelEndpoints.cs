using System.Net.WebSockets;
using System.Text.Json;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;
using Rbs.Gateway.Registration;
using Rbs.Gateway.Security;
using Rbs.Shared.Protocol;
using Rbs.Shared.Tokens;
using Rbs.Shared.Tunnel;

namespace Rbs.Gateway.Tunnel;

/// <summary>The agent endpoint: tunnel WebSockets and the internal registration API.</summary>
internal static partial class TunnelEndpoints
{
    public const string ConnectPath = "/tunnel/v1/connect";

    private const int MaxWaitSeconds = 120;

    public static IEndpointRouteBuilder MapAgentTunnels(this IEndpointRouteBuilder endpoints)
    {
        // Authenticated before the upgrade: a rejected agent gets a plain 4xx it can treat as final.
        endpoints.Map(ConnectPath, AcceptTunnelAsync).RequireAuthorization(GatewayAuthentication.Join);
        // Agents reach this endpoint too (and run user builds), so the internal API wants the orchestrator's token.
        var internalApi = endpoints.MapGroup("/internal/v1").RequireAuthorization(GatewayAuthentication.Internal);
        internalApi.MapGet("/agents", (AgentTunnelRegistry registry) => Results.Json(registry.Snapshot(), s_json));
        internalApi.MapGet("/agents/{agentId}", GetAgentAsync);
        return endpoints;
    }

    private static readonly JsonSerializerOptions s_json = new(JsonSerializerDefaults.Web);

    /// <summary>
    /// 200 with the agent's tunnels when online, else 404. <c>?waitSeconds=N</c> long-polls up to N seconds
    /// for the agent to register, so the orchestrator's GetServer can return once the agent is reachable.
    /// </summary>
    private static async Task<IResult> GetAgentAsync(string agentId, int? waitSeconds, AgentTunnelRegistry registry, TimeProvider timeProvider, CancellationToken cancellationToken)
    {
        var wait = TimeSpan.FromSeconds(Math.Clamp(waitSeconds ?? 0, 0, MaxWaitSeconds));
        var agent = wait > TimeSpan.Zero
            ? await registry.WaitOnlineAsync(agentId, wait, timeProvider, cancellationToken)
            : registry.FindOnline(agentId);
        return agent is null
            ? Results.Json(new AgentTunnelSnapshot(agentId, "", false, 0, 0), s_json, statusCode: StatusCodes.Status404NotFound)
            : Results.Json(agent.ToSnapshot(), s_json);
    }

    private static async Task AcceptTunnelAsync(HttpContext context, RbsTokenService tokens, AgentTunnelRegistry registry, IOptions<GatewayOptions> options, ILoggerFactory loggerFactory)
    {
        var logger = loggerFactory.CreateLogger(typeof(TunnelEndpoints).FullName!);
        // The join policy admitted the request: a valid join token, or an expired one the orchestrator confirmed.
        var claims = GatewayAuthentication.Claims(context);

        if (!context.WebSockets.IsWebSocketRequest)
        {
            context.Response.StatusCode = StatusCodes.Status400BadRequest;
            await context.Response.WriteAsync("expected a WebSocket upgrade\n", context.RequestAborted);
            return;
        }

        if (!registry.CanRegister(claims.AgentId, claims.UserId))
        {
            Log.TunnelForbidden(logger, claims.AgentId);
            context.Response.StatusCode = StatusCodes.Status403Forbidden;
            await context.Response.WriteAsync($"agent {claims.AgentId} is already registered by another user\n", context.RequestAborted);
            return;
        }

        var o = options.Value;
        // Every connect renews the agent's credential; the lifetime lets it time its next renewal on its own clock.
        context.Response.Headers[RbsHeaders.RenewedJoinToken] = tokens.Mint(RbsTokenKind.Join, claims.AgentId, claims.UserId, o.JoinTokenRenewalLifetime);
        context.Response.Headers[RbsHeaders.RenewedJoinTokenLifetime] =
            ((long)o.JoinTokenRenewalLifetime.TotalSeconds).ToString(System.Globalization.CultureInfo.InvariantCulture);
        var webSocket = await context.WebSockets.AcceptWebSocketAsync(new WebSocketAcceptContext
        {
            KeepAliveInterval = o.TunnelKeepAliveInterval,
            KeepAliveTimeout = o.TunnelKeepAliveTimeout,
        });

        var stream = new WebSocketTunnelStream(webSocket);
        var tunnel = registry.Add(claims.AgentId, claims.UserId, stream);
        if (tunnel is null)
        {
            await stream.DisposeAsync();
            return;
        }

        try
        {
            // The request lives as long as the tunnel: until the inner HTTP/2 connection is done with it,
            // the idle watch evicts it, or the gateway stops.
            await stream.Closed;
        }
        finally
        {
            registry.Remove(tunnel);
            await stream.DisposeAsync();
        }
    }

    internal static string? BearerToken(string? authorization)
    {
        const string Prefix = "Bearer ";
        return authorization is not null && authorization.StartsWith(Prefix, StringComparison.OrdinalIgnoreCase)
            ? authorization[Prefix.Length..].Trim()
            : null;
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 121, Level = LogLevel.Warning, Message = "Tunnel for agent {AgentId} refused: the id is online for another user")]
        public static partial void TunnelForbidden(ILogger logger, string agentId);
    }
}
