namespace Rbs.Agent.Outputs;

/// <summary>The outputs of one invocation, or why there are none (<see cref="Files"/> null, <see cref="Note"/> says why).</summary>
internal sealed class InvocationOutputs(string invocationId, IReadOnlyList<OutputRecord>? files, string note)
{
    private readonly Dictionary<string, OutputRecord> _byPath =
        (files ?? []).ToDictionary(file => file.RelativePath, StringComparer.Ordinal);

    public string InvocationId { get; } = invocationId;

    public IReadOnlyList<OutputRecord>? Files { get; } = files;

    /// <summary>For test logs: the labels of the tests whose logs are listed.</summary>
    public IReadOnlyList<string> TestLabels { get; init; } = [];

    /// <summary>Why outputs are missing or incomplete; empty when there is nothing to say.</summary>
    public string Note { get; } = note;

    public OutputRecord? Find(string relativePath) => _byPath.GetValueOrDefault(relativePath);
}

/// <summary>
/// The listed outputs of the most recent <see cref="MaxInvocations"/> invocations (bounded memory), which also serve as
/// the digest cache: an output whose path, size and mtime are unchanged since any retained listing is not hashed again.
/// </summary>
internal sealed class OutputStore
{
    /// <summary>How many invocations' listings are kept; older ones answer NotFound.</summary>
    public const int MaxInvocations = 16;

    /// <summary>The most outputs listed for one invocation.</summary>
    public const int MaxFilesPerInvocation = 100_000;

    private readonly Lock _lock = new();
    private readonly LinkedList<InvocationOutputs> _recent = new();
    private Dictionary<string, OutputRecord> _byLocalPath = new(StringComparer.Ordinal);

    public void Add(InvocationOutputs invocation)
    {
        lock (_lock)
        {
            for (var node = _recent.First; node is not null; node = node.Next)
            {
                if (node.Value.InvocationId == invocation.InvocationId)
                {
                    _recent.Remove(node);
                    break;
                }
            }

            _recent.AddFirst(invocation);
            while (_recent.Count > MaxInvocations)
            {
                _recent.RemoveLast();
            }

            // Rebuilt from the retained listings, newest last so it wins: the cache never outgrows them.
            var byLocalPath = new Dictionary<string, OutputRecord>(StringComparer.Ordinal);
            for (var node = _recent.Last; node is not null; node = node.Previous)
            {
                foreach (var file in node.Value.Files ?? [])
                {
                    byLocalPath[file.LocalPath] = file;
                }
            }

            _byLocalPath = byLocalPath;
        }
    }

    public InvocationOutputs? Find(string invocationId)
    {
        lock (_lock)
        {
            return _recent.FirstOrDefault(invocation => invocation.InvocationId == invocationId);
        }
    }

    /// <summary>A previously hashed record of the file at <paramref name="localPath"/>, if any.</summary>
    public OutputRecord? Cached(string localPath)
    {
        lock (_lock)
        {
            return _byLocalPath.GetValueOrDefault(localPath);
        }
    }
}
