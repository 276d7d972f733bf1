using System.Net.Http;
using System.Net.Sockets;
using Grpc.Core;

namespace Rbs.JBazel.Remote;

/// <summary>An infrastructure failure: one actionable line (printed with the <c>rbs: </c> prefix) and its exit code.</summary>
internal sealed class RemoteFailure(int exitCode, string message) : Exception(message)
{
    /// <summary>How Grpc.Net.Client words a response that is not gRPC: "Bad gRPC response. HTTP status code: 502".</summary>
    private const string BadResponsePrefix = "Bad gRPC response. HTTP status code: ";

    public int ExitCode { get; } = exitCode;

    /// <summary>
    /// Calls in all of an idempotent request (GetServer, a sync) while an intermediary or the network keeps failing it;
    /// the waits between them are <see cref="RetryDelay"/>: 100 ms, doubling (3.1 s in all).
    /// </summary>
    public const int MaxRetriedCalls = 6;

    /// <summary>The wait after the <paramref name="failures"/>-th failed call (1-based): 100 ms, 200, 400, ...</summary>
    public static TimeSpan RetryDelay(int failures) => TimeSpan.FromMilliseconds(100) * (1 << (failures - 1));

    /// <summary>
    /// Whether a failed call may succeed if repeated: the peer was unreachable, slow, overloaded or the
    /// connection broke. Everything else is the server saying no, which repeating will not change.
    /// </summary>
    public static bool IsTransient(RpcException ex) =>
        // A client-side exception means the transport failed (reset stream, closed socket, protocol
        // error), whatever status code it was mapped to; a server's own status arrives without one.
        ex.Status.DebugException is not null || IsTransient(ex.StatusCode);

    /// <summary>
    /// A proxy (a load balancer in front of gateway replicas, or the gateway's own proxy) answered for an upstream that
    /// failed: HTTP 502, 503 or 504 without a gRPC status, e.g. a replica stopping during a rolling restart. gRPC answers
    /// of the servers themselves (Unavailable with their reason) and a refused connection are not this.
    /// </summary>
    public static bool IsIntermediaryFailure(RpcException ex) =>
        ex.StatusCode == StatusCode.Unavailable && ex.Status.DebugException is null
        && ex.Status.Detail is { } detail
        && detail.StartsWith(BadResponsePrefix, StringComparison.Ordinal)
        && detail.AsSpan(BadResponsePrefix.Length) is "502" or "503" or "504";

    /// <summary>Whether a status code the server sent means "try again".</summary>
    public static bool IsTransient(StatusCode code) => code switch
    {
        StatusCode.Unavailable or StatusCode.DeadlineExceeded or StatusCode.ResourceExhausted
            or StatusCode.Aborted or StatusCode.Unknown or StatusCode.Cancelled => true,
        _ => false,
    };

    /// <summary>A short human reason for a failed call: "connection refused", "host not found", or the status detail.</summary>
    public static string Describe(RpcException ex)
    {
        for (Exception? inner = ex.Status.DebugException; inner is not null; inner = inner.InnerException)
        {
            switch (inner)
            {
                case SocketException { SocketErrorCode: SocketError.ConnectionRefused }:
                    return "connection refused";
                case SocketException { SocketErrorCode: SocketError.HostNotFound or SocketError.NoData or SocketError.TryAgain }:
                    return "host not found";
                case SocketException { SocketErrorCode: SocketError.TimedOut }:
                    return "connection timed out";
                case SocketException { SocketErrorCode: SocketError.NetworkUnreachable or SocketError.HostUnreachable } s:
                    return s.Message.ToLowerInvariant();
                case SocketException { SocketErrorCode: SocketError.ConnectionReset }:
                    return "connection reset";
                case HttpRequestException { HttpRequestError: HttpRequestError.NameResolutionError }:
                    return "host not found";
                case HttpProtocolException protocol:
                    return $"the stream was reset, HTTP/2 error {protocol.ErrorCode}";
                case HttpIOException { HttpRequestError: HttpRequestError.ResponseEnded }:
                    return "the connection closed";
                default:
                    break;
            }
        }

        if (ex.StatusCode == StatusCode.DeadlineExceeded)
        {
            return "no answer before the deadline";
        }

        return string.IsNullOrWhiteSpace(ex.Status.Detail) ? ex.StatusCode.ToString() : ex.Status.Detail;
    }
}
