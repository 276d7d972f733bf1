// The relay's three parties (jbazel and the bench, the gateway, the agent) compile this from Shared/: one file, one namespace.
using System.Buffers;
using System.Globalization;
using System.Text;

namespace Rbs.Shared.Tunnel;

/// <summary>
/// The relay: one client connection spliced byte for byte onto one raw agent tunnel, so the client's HTTP/2 connection
/// ends at the agent's Kestrel and the gateway copies bytes instead of terminating HTTP/2 twice (docs/connect-modes.md,
/// "The relay"). Two handshakes, each one line of ASCII ending in CRLF, at most <see cref="MaxLineBytes"/>:
/// <list type="number">
/// <item>Agent → gateway relay endpoint: <c>RBS-TUNNEL/1 &lt;join token&gt;</c>; the gateway answers
/// <c>RBS-TUNNEL/1 200 &lt;agent id&gt;</c> and parks the tunnel, or <c>RBS-TUNNEL/1 &lt;status&gt; &lt;reason&gt;</c> and closes.
/// While parked neither side sends a byte. To use it the gateway sends <see cref="Go"/>; the agent answers
/// <see cref="Ready"/> and from then on serves HTTP/2 (prior knowledge) on the connection.</item>
/// <item>Client → gateway public endpoint, as the connection's first bytes (in place of the HTTP/2 preface):
/// <c>RBS-RELAY/1 &lt;agent route&gt; &lt;session token&gt;</c>; the gateway answers <c>RBS-RELAY/1 200 OK</c> and
/// relays, or <c>RBS-RELAY/1 &lt;status&gt; &lt;reason&gt;</c> and closes. On any refusal the client dials a plain connection
/// instead, whose streams the gateway forwards one by one and answers with a gRPC status.</item>
/// </list>
/// </summary>
internal static class RelayProtocol
{
    /// <summary>The longest handshake line accepted, CRLF included (a session or join token is at most 4,096 characters).</summary>
    public const int MaxLineBytes = 8192;

    /// <summary>Gateway → parked agent tunnel: this tunnel is taken.</summary>
    public const byte Go = (byte)'G';

    /// <summary>Agent → gateway, the answer to <see cref="Go"/>: the agent's HTTP/2 server runs on this connection now.</summary>
    public const byte Ready = (byte)'R';

    public const int Ok = 200;

    /// <summary>The first bytes of a client's relay request.</summary>
    public static ReadOnlySpan<byte> ClientMagic => "RBS-RELAY/1 "u8;

    /// <summary>The first bytes of an agent's relay tunnel.</summary>
    public static ReadOnlySpan<byte> TunnelMagic => "RBS-TUNNEL/1 "u8;

    /// <summary><c>MAGIC field field ...\r\n</c>. Fields must be non-empty printable ASCII without spaces.</summary>
    public static byte[] Line(ReadOnlySpan<byte> magic, params ReadOnlySpan<string> fields)
    {
        var text = new StringBuilder(Encoding.ASCII.GetString(magic));
        for (var i = 0; i < fields.Length; i++)
        {
            if (fields[i].Length == 0 || fields[i].Any(c => c is <= ' ' or > '~'))
            {
                throw new ArgumentException("a relay handshake field must be non-empty printable ASCII without spaces", nameof(fields));
            }

            text.Append(i == 0 ? string.Empty : " ").Append(fields[i]);
        }

        return Encoding.ASCII.GetBytes(text.Append("\r\n").ToString());
    }

    /// <summary>An answer line: <c>MAGIC status reason\r\n</c>; the reason is flattened to printable ASCII.</summary>
    public static byte[] Reply(ReadOnlySpan<byte> magic, int status, string reason)
    {
        var flat = new string([.. reason.Select(c => c is < ' ' or > '~' ? '?' : c)]);
        return Encoding.ASCII.GetBytes($"{Encoding.ASCII.GetString(magic)}{status.ToString(CultureInfo.InvariantCulture)} {flat}\r\n");
    }

    /// <summary>
    /// One handshake line at the start of <paramref name="buffer"/>: true with its fields (after the magic, split at spaces)
    /// and the position after its CRLF; false while incomplete. Throws <see cref="InvalidDataException"/> when the buffer
    /// does not start with <paramref name="magic"/>, the line exceeds <see cref="MaxLineBytes"/> or is not ASCII.
    /// </summary>
    public static bool TryReadLine(ReadOnlySequence<byte> buffer, ReadOnlySpan<byte> magic, out string[] fields, out SequencePosition end)
    {
        fields = [];
        end = buffer.Start;
        var reader = new SequenceReader<byte>(buffer);
        if (!reader.TryReadTo(out ReadOnlySequence<byte> line, (byte)'\n', advancePastDelimiter: true))
        {
            if (buffer.Length >= MaxLineBytes)
            {
                throw new InvalidDataException($"the relay handshake line exceeds {MaxLineBytes} bytes");
            }

            if (buffer.Length >= magic.Length && !buffer.Slice(0, magic.Length).ToArray().AsSpan().SequenceEqual(magic))
            {
                throw new InvalidDataException("not a relay handshake");
            }

            return false;
        }

        if (line.Length + 1 > MaxLineBytes)
        {
            throw new InvalidDataException($"the relay handshake line exceeds {MaxLineBytes} bytes");
        }

        var bytes = line.ToArray();
        if (bytes.Length < magic.Length + 1 || !bytes.AsSpan(0, magic.Length).SequenceEqual(magic) || bytes[^1] != (byte)'\r')
        {
            throw new InvalidDataException("not a relay handshake line");
        }

        var body = bytes.AsSpan(magic.Length, bytes.Length - magic.Length - 1);
        foreach (var b in body)
        {
            if (b is < (byte)' ' or > (byte)'~')
            {
                throw new InvalidDataException("the relay handshake line is not printable ASCII");
            }
        }

        fields = Encoding.ASCII.GetString(body).Split(' ', StringSplitOptions.RemoveEmptyEntries);
        end = reader.Position;
        return true;
    }

    /// <summary>
    /// Reads one answer line from <paramref name="stream"/> byte by byte (nothing after its LF is consumed: the HTTP/2 bytes
    /// that follow belong to the caller), as (status, reason). Throws <see cref="InvalidDataException"/> for anything else
    /// and <see cref="EndOfStreamException"/> when the peer closes first.
    /// </summary>
    public static async Task<(int Status, string Reason)> ReadReplyAsync(Stream stream, byte[] magic, CancellationToken cancellationToken)
    {
        var line = new byte[MaxLineBytes];
        var length = 0;
        while (true)
        {
            if (length == line.Length)
            {
                throw new InvalidDataException($"the relay answer exceeds {MaxLineBytes} bytes");
            }

            var read = await stream.ReadAsync(line.AsMemory(length, 1), cancellationToken);
            if (read == 0)
            {
                throw new EndOfStreamException(length == 0 ? "the relay peer closed the connection without an answer" : "the relay peer closed the connection mid-answer");
            }

            if (line[length++] == (byte)'\n')
            {
                break;
            }
        }

        if (!TryReadLine(new ReadOnlySequence<byte>(line, 0, length), magic, out var fields, out _) || fields.Length == 0
            || !int.TryParse(fields[0], NumberStyles.None, CultureInfo.InvariantCulture, out var status))
        {
            throw new InvalidDataException("the relay answer has no status");
        }

        return (status, string.Join(' ', fields.Skip(1)));
    }
}
