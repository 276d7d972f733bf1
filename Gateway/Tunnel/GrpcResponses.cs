using System.Globalization;
using System.Text;
using Grpc.Core;

namespace Rbs.Gateway.Tunnel;

/// <summary>Gateway-generated gRPC errors, so clients see a status and an actionable message, never a bare 502.</summary>
internal static class GrpcResponses
{
    /// <summary>A trailers-only response: HTTP 200, <c>application/grpc</c>, status in the headers, no body.</summary>
    public static Task WriteStatusAsync(HttpContext context, StatusCode code, string message)
    {
        var response = context.Response;
        response.Clear();
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "application/grpc";
        response.Headers["grpc-status"] = ((int)code).ToString(CultureInfo.InvariantCulture);
        response.Headers["grpc-message"] = PercentEncode(message);
        return response.CompleteAsync();
    }

    /// <summary>Ends a response that already started with a status in the trailers.</summary>
    public static void AppendStatusTrailers(HttpContext context, StatusCode code, string message)
    {
        context.Response.AppendTrailer("grpc-status", ((int)code).ToString(CultureInfo.InvariantCulture));
        context.Response.AppendTrailer("grpc-message", PercentEncode(message));
    }

    /// <summary>gRPC's percent-encoding of grpc-message: printable ASCII except '%' stays, the rest is %XX of UTF-8.</summary>
    public static string PercentEncode(string message)
    {
        var sb = new StringBuilder(message.Length);
        foreach (var b in Encoding.UTF8.GetBytes(message))
        {
            if (b is >= 0x20 and <= 0x7E && b != (byte)'%')
            {
                sb.Append((char)b);
            }
            else
            {
                sb.Append('%').Append(b.ToString("X2", CultureInfo.InvariantCulture));
            }
        }

        return sb.ToString();
    }
}
