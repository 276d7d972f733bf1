using System.Net;
using Grpc.Core;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;
using Rbs.Gateway.Security;
using Yarp.ReverseProxy.Forwarder;

namespace Rbs.Gateway.Tunnel;

/// <summary>
/// Forwards a client's <c>rbs.v1.Agent</c> call to the agent named by <c>rbs-agent-route</c>, over that
/// agent's tunnels, after checking the session token on this very stream. YARP's forwarder does the HTTP/2
/// proxying; HTTP/2 flow control per stream on both legs keeps one slow client from stalling the others.
/// </summary>
internal sealed partial class AgentStreamForwarder(
    IHttpForwarder forwarder,
    AgentTunnelRegistry registry,
    RbsTokenService tokens,
    IOptions<GatewayOptions> options,
    ILogger<AgentStreamForwarder> logger)
{
    public const string RouteHeader = "rbs-agent-route";

    // The host is never resolved: the agent's handler connects through its tunnels.
    private const string DestinationPrefix = "http://agent.rbs-tunnel";

    private static readonly HttpTransformer s_transformer = new StripCredentialsTransformer();

    public async Task ForwardAsync(HttpContext context)
    {
        var route = context.Request.Headers[RouteHeader].ToString();
        if (string.IsNullOrEmpty(route))
        {
            await GrpcResponses.WriteStatusAsync(context, StatusCode.InvalidArgument,
                $"missing '{RouteHeader}' metadata: ask the orchestrator (GetServer, connect mode tunnel) for the agent route");
            return;
        }

        var validation = tokens.Validate(TunnelEndpoints.BearerToken(context.Request.Headers.Authorization), RbsTokenKind.Session);
        if (validation.Claims is not { } claims)
        {
            Log.StreamRejected(logger, route, validation.Failure!);
            await GrpcResponses.WriteStatusAsync(context, StatusCode.Unauthenticated,
                $"session token rejected for agent {route}: {validation.Failure}; call GetServer again for a fresh token");
            return;
        }

        if (!RbsTokenService.FixedTimeEquals(claims.AgentId, route))
        {
            Log.StreamForbidden(logger, route, claims.UserId);
            await GrpcResponses.WriteStatusAsync(context, StatusCode.PermissionDenied,
                $"the session token does not grant access to agent {route}");
            return;
        }

        if (registry.FindOnline(route) is not { } agent)
        {
            await GrpcResponses.WriteStatusAsync(context, StatusCode.Unavailable,
                $"agent {route} is not connected to the gateway; retry, or call GetServer to get a live agent");
            return;
        }

        // Defense in depth: the token's user must own the agent (the owner comes from the agent's join token).
        if (!RbsTokenService.FixedTimeEquals(claims.UserId, agent.UserId))
        {
            Log.StreamForbidden(logger, route, claims.UserId);
            await GrpcResponses.WriteStatusAsync(context, StatusCode.PermissionDenied,
                $"the session token does not grant access to agent {route}");
            return;
        }

        var resetFeature = context.Features.Get<IHttpResetFeature>();
        var interceptor = resetFeature is null ? null : new ResetInterceptor(context, resetFeature);
        if (interceptor is not null)
        {
            context.Features.Set<IHttpResetFeature>(interceptor);
        }

        var requestConfig = new ForwarderRequestConfig
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            ActivityTimeout = options.Value.AgentStreamIdleTimeout,
        };
        var error = await forwarder.SendAsync(context, DestinationPrefix, agent.Invoker, requestConfig, s_transformer);
        if (error == ForwarderError.None)
        {
            return;
        }

        var exception = context.Features.Get<IForwarderErrorFeature>()?.Exception;
        Log.ForwardFailed(logger, route, error, exception);
        if (context.RequestAborted.IsCancellationRequested)
        {
            return;
        }

        if (!context.Response.HasStarted)
        {
            await GrpcResponses.WriteStatusAsync(context, StatusCode.Unavailable,
                $"agent {route} could not be reached through its tunnel ({error}: {exception?.GetBaseException().Message}); retry");
        }
        else if (interceptor?.SuppressedDestinationReset == true)
        {
            GrpcResponses.AppendStatusTrailers(context, StatusCode.Unavailable,
                $"the tunnel to agent {route} was lost mid-stream; the command's state on the agent is unknown, retry");
        }
    }

    /// <summary>The session token is for the gateway only; the agent never sees client credentials.</summary>
    private sealed class StripCredentialsTransformer : HttpTransformer
    {
        public override async ValueTask TransformRequestAsync(HttpContext httpContext, HttpRequestMessage proxyRequest, string destinationPrefix, CancellationToken cancellationToken)
        {
            await base.TransformRequestAsync(httpContext, proxyRequest, destinationPrefix, cancellationToken);
            proxyRequest.Headers.Remove("Authorization");
        }
    }

    /// <summary>
    /// When the agent side fails after the response started, YARP resets the client's stream (the client
    /// would see a bare INTERNAL_ERROR or CANCEL). While the client is still connected, the failure came from
    /// the tunnel side — YARP's error code alone is ambiguous, since either copy direction may notice first —
    /// so we end the stream with a gRPC Unavailable status and a message that says the tunnel was lost.
    /// A client that went away gets the reset as usual.
    /// </summary>
    private sealed class ResetInterceptor(HttpContext context, IHttpResetFeature inner) : IHttpResetFeature
    {
        public bool SuppressedDestinationReset { get; private set; }

        public void Reset(int errorCode)
        {
            if (!context.RequestAborted.IsCancellationRequested)
            {
                SuppressedDestinationReset = true;
                return;
            }

            inner.Reset(errorCode);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 130, Level = LogLevel.Information, Message = "Stream to agent {AgentId} rejected: {Reason}")]
        public static partial void StreamRejected(ILogger logger, string agentId, string reason);

        [LoggerMessage(EventId = 131, Level = LogLevel.Warning, Message = "Stream to agent {AgentId} denied for user {UserId}: token is for another agent or user")]
        public static partial void StreamForbidden(ILogger logger, string agentId, string userId);

        [LoggerMessage(EventId = 132, Level = LogLevel.Warning, Message = "Stream to agent {AgentId} failed: {Error}")]
        public static partial void ForwardFailed(ILogger logger, string agentId, ForwarderError error, Exception? exception);
    }
}
