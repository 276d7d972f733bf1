using System.Security.Cryptography;
using Microsoft.Win32.SafeHandles;

namespace Rbs.Agent.Outputs;

/// <summary>One listed output: where it is, what it was when listed (size, mtime), and its digests.</summary>
internal sealed record OutputRecord(
    string RelativePath,
    string LocalPath,
    long Size,
    long LastWriteTicks,
    bool Executable,
    byte[] Digest,
    IReadOnlyList<byte[]> BlockDigests)
{
    /// <summary>The block size of <see cref="BlockDigests"/> and the largest chunk ReadOutputs sends (1 MiB).</summary>
    public const int BlockSize = 1024 * 1024;

    /// <summary>Whether <paramref name="handle"/> still has the size and mtime this record was made from.</summary>
    public bool Matches(SafeFileHandle handle) =>
        RandomAccess.GetLength(handle) == Size && File.GetLastWriteTimeUtc(handle).Ticks == LastWriteTicks;

    /// <summary>Hashes the file at <paramref name="localPath"/> (whole SHA-256 and per-block SHA-256), or reuses
    /// <paramref name="cached"/> when the file still has its size and mtime.</summary>
    public static OutputRecord Create(string relativePath, string localPath, OutputRecord? cached, byte[] buffer)
    {
        // Bazel has finished writing; a file that still changes while hashed is hashed again, a few times at most.
        for (var attempt = 0; attempt < 3; attempt++)
        {
            using var handle = File.OpenHandle(localPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            var size = RandomAccess.GetLength(handle);
            var ticks = File.GetLastWriteTimeUtc(handle).Ticks;
            var executable = !OperatingSystem.IsWindows() && (File.GetUnixFileMode(handle) & UnixFileMode.UserExecute) != 0;
            if (cached is not null && cached.LocalPath == localPath && cached.Size == size && cached.LastWriteTicks == ticks)
            {
                return cached with { RelativePath = relativePath, Executable = executable };
            }

            var (digest, blocks) = Hash(handle, size, buffer);
            if (RandomAccess.GetLength(handle) == size && File.GetLastWriteTimeUtc(handle).Ticks == ticks)
            {
                return new OutputRecord(relativePath, localPath, size, ticks, executable, digest, blocks);
            }
        }

        throw new IOException($"'{localPath}' kept changing while it was hashed");
    }

    private static (byte[] Digest, List<byte[]> Blocks) Hash(SafeFileHandle handle, long size, byte[] buffer)
    {
        using var whole = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var blocks = new List<byte[]>((int)((size + BlockSize - 1) / BlockSize));
        long offset = 0;
        while (offset < size)
        {
            var length = (int)Math.Min(BlockSize, size - offset);
            var filled = 0;
            while (filled < length)
            {
                var read = RandomAccess.Read(handle, buffer.AsSpan(filled, length - filled), offset + filled);
                if (read == 0)
                {
                    throw new IOException("the file became shorter while it was hashed");
                }

                filled += read;
            }

            var block = buffer.AsSpan(0, length);
            whole.AppendData(block);
            blocks.Add(SHA256.HashData(block));
            offset += length;
        }

        return (whole.GetHashAndReset(), blocks);
    }
}
