using System.Globalization;
using System.Net;

namespace Rbs.Agent.Hosting;

/// <summary>Parses <c>Agent:Listen</c>: <c>host:port</c> where host is an IP address (IPv6 in brackets) or <c>localhost</c>.</summary>
internal static class ListenAddress
{
    /// <param name="value">E.g. <c>127.0.0.1:0</c>, <c>0.0.0.0:9011</c>, <c>[::1]:0</c>, <c>localhost:9011</c>.</param>
    /// <param name="endPoint">The IP endpoint, or null for localhost.</param>
    /// <param name="port">The port (0 = ephemeral).</param>
    public static bool TryParse(string? value, out IPEndPoint? endPoint, out int port)
    {
        endPoint = null;
        port = 0;
        if (string.IsNullOrWhiteSpace(value))
        {
            return false;
        }

        var colon = value.LastIndexOf(':');
        if (colon > 0 && value[..colon].Equals("localhost", StringComparison.OrdinalIgnoreCase))
        {
            return int.TryParse(value[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out port)
                && port is >= 0 and <= 65535;
        }

        // IPEndPoint.TryParse accepts a bare address (port 0); insist on an explicit port.
        if (colon < 0 || value.EndsWith(']') || !IPEndPoint.TryParse(value, out endPoint))
        {
            endPoint = null;
            return false;
        }

        port = endPoint.Port;
        return true;
    }
}
