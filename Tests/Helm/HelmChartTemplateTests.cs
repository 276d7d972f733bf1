using System.Text.RegularExpressions;
using YamlDotNet.RepresentationModel;

namespace Rbs.Tests.Helm;

/// <summary>
/// Cheap structural checks of helm/rbs, because helm itself does not run on this machine: template actions are
/// balanced, and every <c>.Values.x.y</c> a template reads is declared (and so documented) in values.yaml.
/// Not a substitute for <c>helm lint</c>/<c>helm template</c>, which e2e/kind_test.sh runs implicitly.
/// </summary>
public sealed partial class HelmChartTemplateTests(ITestOutputHelper output)
{
    [Fact]
    public void TemplateBlocksAreBalanced()
    {
        var problems = new List<string>();
        foreach (var file in TemplateFiles())
        {
            var text = File.ReadAllText(file);
            var stack = new Stack<string>();
            foreach (Match action in Action().Matches(text))
            {
                var body = action.Groups[1].Value.Trim();
                if (body.StartsWith("/*", StringComparison.Ordinal))
                {
                    continue;
                }

                var keyword = body.Split([' ', '(', '\n'], 2)[0];
                switch (keyword)
                {
                    case "if" or "range" or "with" or "define":
                        stack.Push(keyword);
                        break;
                    case "else":
                        if (stack.Count == 0 || stack.Peek() == "define")
                        {
                            problems.Add($"{Path.GetFileName(file)}: 'else' outside if/with/range at offset {action.Index}");
                        }

                        break;
                    case "end":
                        if (!stack.TryPop(out _))
                        {
                            problems.Add($"{Path.GetFileName(file)}: 'end' without a block at offset {action.Index}");
                        }

                        break;
                }
            }

            if (stack.Count > 0)
            {
                problems.Add($"{Path.GetFileName(file)}: unclosed {string.Join(", ", stack)}");
            }

            var opens = Regex.Count(text, @"\{\{");
            var closes = Regex.Count(text, @"\}\}");
            if (opens != closes)
            {
                problems.Add($"{Path.GetFileName(file)}: {opens} '{{{{' vs {closes} '}}}}'");
            }
        }

        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    [Fact]
    public void EveryValueTheTemplatesReadIsDeclaredInValuesYaml()
    {
        var yaml = new YamlStream();
        using (var reader = new StreamReader(Path.Combine(ChartDirectory(), "values.yaml")))
        {
            yaml.Load(reader);
        }

        var values = (YamlMappingNode)yaml.Documents[0].RootNode;
        var missing = new SortedSet<string>();
        var count = 0;
        foreach (var file in TemplateFiles())
        {
            foreach (Match reference in ValuesReference().Matches(File.ReadAllText(file)))
            {
                count++;
                var path = reference.Groups[1].Value.TrimStart('.').Split('.');
                if (!Exists(values, path))
                {
                    missing.Add($".Values.{string.Join('.', path)} ({Path.GetFileName(file)})");
                }
            }
        }

        output.WriteLine($"{count} .Values references checked");
        Assert.True(count > 50, "too few .Values references found; is the pattern broken?");
        Assert.True(missing.Count == 0, "Not declared in values.yaml:\n" + string.Join("\n", missing));
    }

    private static bool Exists(YamlNode node, string[] path)
    {
        foreach (var segment in path)
        {
            if (node is not YamlMappingNode mapping || !mapping.Children.TryGetValue(new YamlScalarNode(segment), out var child))
            {
                return false;
            }

            node = child;
        }

        return true;
    }

    private static IEnumerable<string> TemplateFiles() =>
        Directory.EnumerateFiles(Path.Combine(ChartDirectory(), "templates"));

    private static string ChartDirectory()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var chart = Path.Combine(dir.FullName, "helm", "rbs");
            if (File.Exists(Path.Combine(chart, "Chart.yaml")))
            {
                return chart;
            }
        }

        throw new DirectoryNotFoundException("helm/rbs not found above " + AppContext.BaseDirectory);
    }

    [GeneratedRegex(@"\{\{-?\s*(.*?)\s*-?\}\}", RegexOptions.Singleline)]
    private static partial Regex Action();

    [GeneratedRegex(@"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")]
    private static partial Regex ValuesReference();
}
