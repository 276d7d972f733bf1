using System.Net;
using Grpc.Core;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;
using Rbs.Gateway.Registration;
using Rbs.Gateway.Security;
using Rbs.Shared.Protocol;
using Rbs.Shared.Text;
using Rbs.Shared.Tokens;
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
    AgentDirectoryClient directory,
    GatewayHeap heap,
    IOptions<GatewayOptions> options,
    TimeProvider timeProvider,
    TunnelMetrics metrics,
    ILogger<AgentStreamForwarder> logger) : IDisposable
{
    // The host is never resolved: the agent's handler connects through its tunnels.
    private const string DestinationPrefix = "http://agent.rbs-tunnel";

    private static readonly HttpTransformer s_transformer = new StripCredentialsTransformer();

    // Gateway-wide: each forwarded stream owns bounded buffers (docs/limits.md), so their number bounds the memory.
    private readonly SemaphoreSlim _streamSlots = new(options.Value.MaxConcurrentStreams, options.Value.MaxConcurrentStreams);

    /// <summary>Client streams being forwarded now (a draining replica waits for them).</summary>
    public int ActiveStreams => options.Value.MaxConcurrentStreams - _streamSlots.CurrentCount;

    private int _waitingStreams;

    /// <summary>Client streams waiting for their agent to (re-)register or for a free stream slot.</summary>
    public int WaitingStreams => Volatile.Read(ref _waitingStreams);

    public async Task ForwardAsync(HttpContext context)
    {
        // The session policy admitted the stream: a valid session token whose agent is the route (GatewayAuthentication).
        var claims = GatewayAuthentication.Claims(context);
        var route = claims.AgentId;
        // Client input: quoted in messages only through UntrustedText.Echo (a long header would not fit the reply's).
        var shown = UntrustedText.Echo(route);
        if ((registry.FindOnline(route) ?? await WaitForAgentAsync(context, route, claims.UserId)) is not { } agent)
        {
            return;
        }

        // Defense in depth: the token's user must own the agent (the owner comes from the agent's join token).
        if (!RbsTokenService.FixedTimeEquals(claims.UserId, agent.UserId))
        {
            Log.StreamForbidden(logger, shown, claims.UserId);
            await GrpcResponses.WriteStatusAsync(context, StatusCode.PermissionDenied,
                $"the session token does not grant access to agent {shown}");
            return;
        }

        if (!await AdmitAsync(context, route))
        {
            return;
        }

        try
        {
            await ForwardAdmittedAsync(context, route, agent);
        }
        finally
        {
            _streamSlots.Release();
        }
    }

    public void Dispose() => _streamSlots.Dispose();

    /// <summary>
    /// Takes one of the <see cref="GatewayOptions.MaxConcurrentStreams"/> slots, once the heap has room for another
    /// stream (<see cref="GatewayHeap"/>), waiting up to <see cref="GatewayOptions.TunnelAcquireTimeout"/> for both while
    /// the gateway is full. False once a status was written (or the client went away).
    /// </summary>
    private async Task<bool> AdmitAsync(HttpContext context, string route)
    {
        var heapHasRoom = heap.HasRoomForStream(out var heapBytes, out var heapThreshold);
        if (heapHasRoom && _streamSlots.Wait(0))
        {
            return true;
        }

        var o = options.Value;
        var waitingForHeap = false;
        Interlocked.Increment(ref _waitingStreams);
        try
        {
            using var timeout = new CancellationTokenSource(o.TunnelAcquireTimeout, timeProvider);
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted, timeout.Token);
            if (!heapHasRoom)
            {
                waitingForHeap = true;
                Log.StreamWaitsForHeap(logger, route, heapBytes / (1024 * 1024), heapThreshold / (1024 * 1024));
                await heap.WaitForRoomAsync(linked.Token);
                waitingForHeap = false;
            }

            if (!_streamSlots.Wait(0))
            {
                Log.StreamQueued(logger, route, o.MaxConcurrentStreams);
                await _streamSlots.WaitAsync(linked.Token);
            }

            return true;
        }
        catch (OperationCanceledException) when (!context.RequestAborted.IsCancellationRequested)
        {
            metrics.ForwardFailed(TunnelMetrics.GatewayFull);
            var reason = waitingForHeap
                ? $"the gateway's heap stayed above {o.StreamAdmissionHeapPercent}% of its limit ({heap.AvailableMiB} MiB: Gateway:HeapLimit, or the container's limit) for {o.TunnelAcquireTimeout.TotalSeconds:0.#} s, so it admits no new stream"
                : $"the gateway carries its maximum of {o.MaxConcurrentStreams} concurrent streams (Gateway:MaxConcurrentStreams) and none ended within {o.TunnelAcquireTimeout.TotalSeconds:0.#} s";
            await GrpcResponses.WriteStatusAsync(context, StatusCode.Unavailable, $"{reason}; retry later");
            return false;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
        finally
        {
            Interlocked.Decrement(ref _waitingStreams);
        }
    }

    private async Task ForwardAdmittedAsync(HttpContext context, string route, AgentTunnels agent)
    {
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
            // The client went away (Ctrl-C, a dropped laptop): not a failure of the gateway's.
            return;
        }

        if (!IsClientSide(error))
        {
            metrics.ForwardFailed(context.Response.HasStarted ? TunnelMetrics.TunnelLost : TunnelMetrics.AgentUnreachable);
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

    /// <summary>
    /// The bounded admission wait for an agent that is not connected: after a gateway restart (or a dropped link) a
    /// live agent re-registers within its reconnect backoff, and a stream that arrives meanwhile waits for it (up to
    /// <see cref="GatewayOptions.TunnelAcquireTimeout"/>) instead of failing. The orchestrator is asked first, so a
    /// stream for an agent it does not know as live (stopped, reaped, never existed) fails at once. Null once a
    /// status was written (or the client went away).
    /// </summary>
    private async Task<AgentTunnels?> WaitForAgentAsync(HttpContext context, string route, string userId)
    {
        if (registry.Stopping)
        {
            // A draining replica takes no tunnels, so waiting is futile; the client's retry reaches another replica.
            await GrpcResponses.WriteStatusAsync(context, StatusCode.Unavailable,
                $"this gateway replica is draining and agent {route} has no tunnel to it any more; retry (a new connection reaches another replica)");
            return null;
        }

        var confirmation = await directory.ConfirmAsync(route, userId, context.RequestAborted);
        if (confirmation.Outcome == AgentConfirmation.NotLive)
        {
            metrics.ForwardFailed(TunnelMetrics.AgentOffline);
            await GrpcResponses.WriteStatusAsync(context, StatusCode.Unavailable,
                $"agent {route} is not connected to the gateway and the orchestrator does not know it as live ({confirmation.Reason}); call GetServer to get a live agent (jbazel does on its next run)");
            return null;
        }

        // Live, or the orchestrator cannot say (then the session token, which it minted, is the best evidence there is).
        var wait = options.Value.TunnelAcquireTimeout;
        Log.WaitingForAgent(logger, route, wait.TotalSeconds);
        AgentTunnels? agent;
        Interlocked.Increment(ref _waitingStreams);
        try
        {
            agent = await registry.WaitOnlineAsync(route, wait, timeProvider, context.RequestAborted);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            return null;
        }
        finally
        {
            Interlocked.Decrement(ref _waitingStreams);
        }

        if (agent is null)
        {
            metrics.ForwardFailed(TunnelMetrics.AgentOffline);
            await GrpcResponses.WriteStatusAsync(context, StatusCode.Unavailable,
                $"agent {route} is not connected to the gateway (waited {wait.TotalSeconds:0.#} s for it to register); retry, or call GetServer to get a live agent");
        }

        return agent;
    }

    /// <summary>
    /// The client's side of the stream ended it (it cancelled, or stopped sending or reading, e.g. a call it finished
    /// early): not a failure of the gateway's or of the tunnel's, so not counted in rbs.gateway.forward.errors.
    /// </summary>
    internal static bool IsClientSide(ForwarderError error) =>
        error.ToString() is var name && (name.EndsWith("Client", StringComparison.Ordinal) || name.EndsWith("Canceled", StringComparison.Ordinal));

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
        [LoggerMessage(EventId = 131, Level = LogLevel.Warning, Message = "Stream to agent {AgentId} denied for user {UserId}: token is for another agent or user")]
        public static partial void StreamForbidden(ILogger logger, string agentId, string userId);

        [LoggerMessage(EventId = 132, Level = LogLevel.Warning, Message = "Stream to agent {AgentId} failed: {Error}")]
        public static partial void ForwardFailed(ILogger logger, string agentId, ForwarderError error, Exception? exception);

        [LoggerMessage(EventId = 133, Level = LogLevel.Information, Message = "Stream to agent {AgentId} waits up to {Seconds:0.#} s for the agent to (re-)register")]
        public static partial void WaitingForAgent(ILogger logger, string agentId, double seconds);

        [LoggerMessage(EventId = 134, Level = LogLevel.Warning, Message = "Stream to agent {AgentId} waits for a slot: the gateway carries its maximum of {Max} concurrent streams")]
        public static partial void StreamQueued(ILogger logger, string agentId, int max);

        [LoggerMessage(EventId = 135, Level = LogLevel.Warning, Message = "Stream to agent {AgentId} waits for heap room: {Heap} MiB after the last collection, new streams are admitted below {Threshold} MiB")]
        public static partial void StreamWaitsForHeap(ILogger logger, string agentId, long heap, long threshold);
    }
}
