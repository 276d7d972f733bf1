using System.Security.Cryptography;

namespace Rbs.JBazel.Diagnostics;

/// <summary>
/// The W3C trace context of one jbazel run: jbazel starts the trace (a random trace id and span id, sampled) and sends
/// it as gRPC metadata <see cref="HeaderName"/> on GetServer, the workspace sync, ExecuteCommand and the output
/// fetch; the orchestrator, gateway and agent continue it (ASP.NET Core reads the header), so one invocation is one
/// trace. Made by hand: jbazel is Native AOT and carries no OpenTelemetry SDK. docs/operations.md.
/// </summary>
internal sealed record TraceParent(string TraceId, string SpanId)
{
    public const string HeaderName = "traceparent";

    /// <summary>version 00, sampled (flags 01): <c>00-&lt;32 hex&gt;-&lt;16 hex&gt;-01</c>.</summary>
    public string Header => $"00-{TraceId}-{SpanId}-01";

    public static TraceParent New() => new(NonZeroHex(16), NonZeroHex(8));

    // All-zero ids are invalid in W3C trace context; a random one is that with probability 2^-64 at most, but cheap to rule out.
    private static string NonZeroHex(int bytes)
    {
        Span<byte> id = stackalloc byte[bytes];
        do
        {
            RandomNumberGenerator.Fill(id);
        }
        while (!id.ContainsAnyExcept((byte)0));

        return Convert.ToHexStringLower(id);
    }
}
