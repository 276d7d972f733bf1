using System.Text;
using System.Text.Json;
using Rbs.Shared.Paths;

namespace Rbs.Agent.Outputs;

/// <summary>One top-level output named by the Build Event Protocol file.</summary>
/// <param name="RelativePath">Relative to bazel's execroot, '/'-separated (e.g. <c>bazel-out/k8-fastbuild/bin/app/x.txt</c>).</param>
/// <param name="LocalPath">Where the file is on this machine (from its <c>file://</c> URI).</param>
internal sealed record BuildEventOutput(string RelativePath, string LocalPath);

/// <summary>What a BEP file says about a build's top-level outputs.</summary>
/// <param name="Outputs">Distinct outputs in the order bazel reported them.</param>
/// <param name="Notes">Why some reported files were left out (not local, unsafe path, oversized event, too many).</param>
internal sealed record BuildEventOutputs(IReadOnlyList<BuildEventOutput> Outputs, IReadOnlyList<string> Notes);

/// <summary>
/// Reads the top-level outputs from a <c>--build_event_json_file</c> (one JSON event per line): the files of the output
/// groups of every <c>targetCompleted</c> event, with <c>namedSetOfFiles</c> references resolved transitively.
/// </summary>
/// <remarks>
/// Bounded: only <c>namedSet</c> and <c>targetCompleted</c> lines are parsed (bazel writes <c>{"id":{"kind"</c> first,
/// so every other event — progress with megabytes of stderr, metrics — is skipped while reading, never buffered), one
/// event is at most <see cref="MaxEventBytes"/>, and at most <c>maxFiles</c> outputs are kept. Unknown events and
/// malformed lines are ignored: the protocol grows, and a truncated last line must not lose the rest.
/// </remarks>
internal static class BuildEventFile
{
    /// <summary>The largest single event parsed; a larger namedSet/targetCompleted line is skipped with a note.</summary>
    public const int MaxEventBytes = 64 * 1024 * 1024;

    private const int ClassifyBytes = 64;

    private static readonly byte[] s_idPrefix = "{\"id\":{\""u8.ToArray();

    public static BuildEventOutputs Read(string path, int maxFiles)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1, FileOptions.SequentialScan);
        return Read(stream, maxFiles);
    }

    public static BuildEventOutputs Read(Stream stream, int maxFiles)
    {
        var state = new ParseState();
        foreach (var line in Lines(stream, state.Notes))
        {
            state.Handle(line.Span);
        }

        return state.Resolve(maxFiles);
    }

    /// <summary>The lines worth parsing, each at most <see cref="MaxEventBytes"/>; everything else is skipped unbuffered.</summary>
    private static IEnumerable<ReadOnlyMemory<byte>> Lines(Stream stream, List<string> notes)
    {
        var buffer = new byte[64 * 1024];
        var line = new MemoryStream();
        // Per line: null = not classified yet, true = keep, false = skip to the newline.
        bool? keep = null;
        var oversized = false;
        int read;
        while ((read = stream.Read(buffer, 0, buffer.Length)) > 0)
        {
            var start = 0;
            while (start < read)
            {
                var newline = Array.IndexOf(buffer, (byte)'\n', start, read - start);
                var end = newline < 0 ? read : newline;
                if (keep is not false)
                {
                    line.Write(buffer, start, end - start);
                    if (keep is null && (line.Length >= ClassifyBytes || newline >= 0))
                    {
                        keep = IsInteresting(line.GetBuffer().AsSpan(0, (int)line.Length));
                        if (keep is false)
                        {
                            line.SetLength(0);
                        }
                    }

                    if (keep is true && line.Length > MaxEventBytes)
                    {
                        oversized = true;
                        keep = false;
                        line.SetLength(0);
                    }
                }

                if (newline < 0)
                {
                    break;
                }

                if (keep is true)
                {
                    yield return line.GetBuffer().AsMemory(0, (int)line.Length);
                }
                else if (oversized)
                {
                    notes.Add($"skipped a build event larger than {MaxEventBytes / (1024 * 1024)} MiB; its files are not listed");
                }

                line.SetLength(0);
                keep = null;
                oversized = false;
                start = newline + 1;
            }
        }

        // A last line without a newline (bazel always ends lines; a truncated file may not).
        if (line.Length > 0 && keep is not false && IsInteresting(line.GetBuffer().AsSpan(0, (int)line.Length)))
        {
            yield return line.GetBuffer().AsMemory(0, (int)line.Length);
        }
    }

    /// <summary>
    /// True for namedSet and targetCompleted events, and for lines in an unexpected shape (parsed to be
    /// sure); false for every other event kind.
    /// </summary>
    private static bool IsInteresting(ReadOnlySpan<byte> head)
    {
        var trimmed = head.TrimStart(" \t\r"u8);
        if (!trimmed.StartsWith(s_idPrefix))
        {
            return trimmed.Length > 0;
        }

        var kind = trimmed[s_idPrefix.Length..];
        return kind.StartsWith("namedSet\""u8) || kind.StartsWith("targetCompleted\""u8);
    }

    private sealed class ParseState
    {
        private readonly Dictionary<string, NamedSet> _namedSets = new(StringComparer.Ordinal);
        private readonly List<string> _rootSets = [];
        private readonly List<BepFile> _directFiles = [];
        private int _malformed;

        public List<string> Notes { get; } = [];

        public void Handle(ReadOnlySpan<byte> line)
        {
            try
            {
                var reader = new Utf8JsonReader(line);
                using var document = JsonDocument.ParseValue(ref reader);
                var root = document.RootElement;
                if (Property(root, "id") is not { } id)
                {
                    return;
                }

                if (Property(id, "namedSet") is { } namedSetId && Text(Property(namedSetId, "id")) is { } setId)
                {
                    if (Property(root, "namedSetOfFiles") is { } set)
                    {
                        var files = new List<BepFile>();
                        foreach (var file in Items(Property(set, "files")))
                        {
                            if (ToFile(file) is { } parsed)
                            {
                                files.Add(parsed);
                            }
                        }

                        var children = Items(Property(set, "fileSets")).Select(child => Text(Property(child, "id"))).OfType<string>().ToList();
                        _namedSets[setId] = new NamedSet(files, children);
                    }
                }
                else if (Property(id, "targetCompleted") is not null && Property(root, "completed") is { } completed)
                {
                    var groups = Items(Property(completed, "outputGroup")).ToList();
                    foreach (var group in groups)
                    {
                        foreach (var set in Items(Property(group, "fileSets")))
                        {
                            if (Text(Property(set, "id")) is { } rootId)
                            {
                                _rootSets.Add(rootId);
                            }
                        }
                    }

                    if (groups.Count == 0)
                    {
                        // Older bazels list the default outputs directly.
                        foreach (var file in Items(Property(completed, "importantOutput")))
                        {
                            if (ToFile(file) is { } parsed)
                            {
                                _directFiles.Add(parsed);
                            }
                        }
                    }
                }
            }
            catch (JsonException)
            {
                _malformed++;
            }
        }

        public BuildEventOutputs Resolve(int maxFiles)
        {
            if (_malformed > 0)
            {
                Notes.Add($"ignored {_malformed} malformed build event line(s)");
            }

            var outputs = new List<BuildEventOutput>();
            var seenPaths = new HashSet<string>(StringComparer.Ordinal);
            var skipped = 0;
            var tooMany = false;

            void Add(BepFile file)
            {
                if (outputs.Count >= maxFiles)
                {
                    tooMany = true;
                    return;
                }

                if (ToOutput(file) is { } output)
                {
                    if (seenPaths.Add(output.RelativePath))
                    {
                        outputs.Add(output);
                    }
                }
                else
                {
                    skipped++;
                }
            }

            foreach (var file in _directFiles)
            {
                Add(file);
            }

            // Iterative walk (named sets nest arbitrarily deep); each set is expanded once, like bazel's own consumers.
            var visited = new HashSet<string>(StringComparer.Ordinal);
            var missing = 0;
            var pending = new Stack<string>();
            for (var i = _rootSets.Count - 1; i >= 0; i--)
            {
                pending.Push(_rootSets[i]);
            }

            while (pending.Count > 0 && !tooMany)
            {
                var setId = pending.Pop();
                if (!visited.Add(setId))
                {
                    continue;
                }

                if (!_namedSets.TryGetValue(setId, out var set))
                {
                    missing++;
                    continue;
                }

                foreach (var file in set.Files)
                {
                    Add(file);
                }

                for (var i = set.Children.Count - 1; i >= 0; i--)
                {
                    pending.Push(set.Children[i]);
                }
            }

            if (missing > 0)
            {
                Notes.Add($"{missing} referenced file set(s) were never announced in the build event file");
            }

            if (skipped > 0)
            {
                Notes.Add($"skipped {skipped} output(s) that are not local files inside bazel's output tree (e.g. remote-only or unsafe paths)");
            }

            if (tooMany)
            {
                Notes.Add($"listed only the first {maxFiles} outputs");
            }

            return new BuildEventOutputs(outputs, Notes);
        }

        private static BepFile? ToFile(JsonElement file)
        {
            if (Text(Property(file, "name")) is not { } name)
            {
                return null;
            }

            var prefix = Items(Property(file, "pathPrefix")).Select(item => Text(item)).OfType<string>().ToList();
            return new BepFile(name, Text(Property(file, "uri")), prefix);
        }

        private static BuildEventOutput? ToOutput(BepFile file)
        {
            if (file.Uri is null
                || !Uri.TryCreate(file.Uri, UriKind.Absolute, out var uri)
                || !uri.IsFile
                || !string.IsNullOrEmpty(uri.Host))
            {
                return null;
            }

            var local = uri.LocalPath;
            string relative;
            if (file.PathPrefix.Count > 0)
            {
                relative = string.Join('/', [.. file.PathPrefix, file.Name]);
            }
            else
            {
                // No prefix: a source file (its name is workspace-relative) or an output from an older bazel, whose
                // URI is <output base>/execroot/<workspace>/<execroot-relative path>.
                var marker = local.IndexOf("/execroot/", StringComparison.Ordinal);
                var afterWorkspace = marker < 0 ? -1 : local.IndexOf('/', marker + "/execroot/".Length);
                relative = afterWorkspace >= 0 && local.AsSpan(afterWorkspace + 1).StartsWith("bazel-out/", StringComparison.Ordinal)
                    ? local[(afterWorkspace + 1)..]
                    : file.Name;
            }

            return OutputPaths.IsSafeRelative(relative) ? new BuildEventOutput(relative, local) : null;
        }

        private static JsonElement? Property(JsonElement? element, string name) =>
            element is { ValueKind: JsonValueKind.Object } e && e.TryGetProperty(name, out var value) ? value : null;

        private static string? Text(JsonElement? element) =>
            element is { ValueKind: JsonValueKind.String } e ? e.GetString() : null;

        private static IEnumerable<JsonElement> Items(JsonElement? element) =>
            element is { ValueKind: JsonValueKind.Array } e ? e.EnumerateArray() : [];
    }

    private sealed record BepFile(string Name, string? Uri, IReadOnlyList<string> PathPrefix);

    private sealed record NamedSet(IReadOnlyList<BepFile> Files, IReadOnlyList<string> Children);
}

/// <summary>Rules for the relative output paths the agent lists and serves.</summary>
internal static class OutputPaths
{
    /// <summary>'/'-separated, relative, no empty, "." or ".." segments, no NUL: safe to join under any root (jbazel checks the same).</summary>
    public static bool IsSafeRelative(string path) => SafeRelativePath.IsSafe(path);

    public static string Describe(IReadOnlyList<string> notes) =>
        notes.Count == 0 ? "" : new StringBuilder().AppendJoin("; ", notes).ToString();
}
