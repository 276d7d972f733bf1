using System.Net.WebSockets;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;
using Rbs.Gateway.Registration;
using Rbs.Gateway.Replicas;
using Rbs.Gateway.Security;
using Rbs.Shared.Protocol;
using Rbs.Shared.Tokens;
using Rbs.Shared.Tunnel;

namespace Rbs.Gateway.Tunnel;

/// <summary>
/// The agents' tunnel WebSockets on the agent endpoint. The orchestrator's registration queries share that endpoint:
/// <see cref="GatewayRegistryService"/>.
/// </summary>
internal static partial class TunnelEndpoints
{
    public const string ConnectPath = "/tunnel/v1/connect";

    public static IEndpointRouteBuilder MapAgentTunnels(this IEndpointRouteBuilder endpoints)
    {
        // Authenticated before the upgrade: a rejected agent gets a plain 4xx it can treat as final.
        endpoints.Map(ConnectPath, AcceptTunnelAsync).RequireAuthorization(GatewayAuthentication.Join);
        // The live replica set, for agents of a replicated gateway (404 on a single gateway).
        endpoints.MapGet(GatewayReplicaList.Path, ServeReplicasAsync).RequireAuthorization(GatewayAuthentication.Join);
        return endpoints;
    }

    private static async Task ServeReplicasAsync(HttpContext context, GatewayReplicaSet replicas, TimeProvider timeProvider)
    {
        if (!replicas.Enabled)
        {
            context.Response.StatusCode = StatusCodes.Status404NotFound;
            return;
        }

        var version = context.Request.Query[GatewayReplicaList.VersionQuery].FirstOrDefault();
        GatewayReplicaList current;
        try
        {
            current = await replicas.WaitForChangeAsync(version, GatewayReplicaList.MaxWait, timeProvider, context.RequestAborted);
        }
        catch (OperationCanceledException)
        {
            return;
        }

        context.Response.Headers.CacheControl = "no-store";
        await context.Response.WriteAsJsonAsync(current, GatewayReplicaJson.Default.GatewayReplicaList, cancellationToken: context.RequestAborted);
    }

    private static async Task AcceptTunnelAsync(HttpContext context, RbsTokenService tokens, AgentTunnelRegistry registry, GatewayReplicaSet replicas, Relay.RelayTunnelListener relay, IOptions<GatewayOptions> options, ILoggerFactory loggerFactory)
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

        if (registry.Stopping)
        {
            // Draining or stopping: not a verdict on the agent's credentials. The agent retries (5xx), and a replicated
            // agent drops this replica once it leaves the set.
            context.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
            context.Response.Headers.RetryAfter = "1";
            await context.Response.WriteAsync("this gateway is draining; dial another replica\n", context.RequestAborted);
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
        if (replicas.Enabled)
        {
            context.Response.Headers[RbsHeaders.GatewayReplica] = replicas.SelfId;
        }

        if (relay.Port is { } relayPort)
        {
            // The agent parks raw relay tunnels there too (Relay/).
            context.Response.Headers[RbsHeaders.GatewayRelayPort] = relayPort.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }

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
