using System.Security.Cryptography;
using Google.Protobuf;
using Rbs.V1;

namespace Rbs.Shared.Sync;

/// <summary>
/// sync.proto's manifest digest: SHA-256 over each entry's length-delimited encoding (<c>WriteDelimitedTo</c> bytes),
/// in manifest order. jbazel computes it over the manifest it sends and the agent over the entries as they arrive; if
/// the two framings ever differed every sync would fail, so both link this one file.
/// </summary>
internal sealed class ManifestDigest : IDisposable
{
    /// <summary>The digest's size in bytes: a SHA-256.</summary>
    public const int Length = SHA256.HashSizeInBytes;

    private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

    // One reused buffer: WriteDelimitedTo(Stream) would allocate a 4 KiB CodedOutputStream per entry.
    private byte[] _buffer = new byte[1024];

    /// <summary>The digest of <paramref name="entries"/>, in their order.</summary>
    public static byte[] Compute(IEnumerable<ManifestEntry> entries)
    {
        using var digest = new ManifestDigest();
        foreach (var entry in entries)
        {
            digest.Append(entry);
        }

        return digest.Finish();
    }

    /// <summary>Adds the next entry: its varint length, then its bytes.</summary>
    public void Append(ManifestEntry entry)
    {
        var size = entry.CalculateSize();
        var prefix = CodedOutputStream.ComputeLengthSize(size);
        if (_buffer.Length < prefix + size)
        {
            _buffer = new byte[(prefix + size) * 2];
        }

        var length = (uint)size;
        var at = 0;
        while (length >= 0x80)
        {
            _buffer[at++] = (byte)(length | 0x80);
            length >>= 7;
        }

        _buffer[at] = (byte)length;
        entry.WriteTo(_buffer.AsSpan(prefix, size));
        _hash.AppendData(_buffer, 0, prefix + size);
    }

    /// <summary>The digest of the entries appended so far; starts over afterwards.</summary>
    public byte[] Finish() => _hash.GetHashAndReset();

    public void Dispose() => _hash.Dispose();
}
